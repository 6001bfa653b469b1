"""The search algorithm and trial scheduler (Optuna samplers behind Tune, ASHA, HyperBand, PBT,
the median rule), stop when flat, and an earlier study's trials a search is warm-started from."""
