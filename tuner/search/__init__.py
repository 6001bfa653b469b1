"""`tuner search`: a Ray Tune study of the trainer, from its lifecycle (new or resumed, checked,
warm-started, run, summarised) to the trainable, searchers and schedulers, recorded in MLflow
through tuner.store from the driver (tracking) and shown live on the console."""
