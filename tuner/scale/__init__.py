"""`tuner scale`: power laws of the best hyperparameters in compute, fitted through finished
studies at several model sizes or budgets (issue #41 part 3).

- `fit`: near-optimal trials, the log-log least-squares fit and its bootstrap (numpy only);
- `studies`: each study's finished full-budget trials, read from MLflow through `tuner.store`;
- `plot`: scaling.png;
- `record`: the fit as a run of MLflow experiment `scaling`, and reading it back;
- `export`: the prediction as a fixed study file (`tuner best --study FIT --export FILE`).
"""
