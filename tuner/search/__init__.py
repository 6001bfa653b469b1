"""`tuner search`: a Ray Tune study of the trainer (trainable, searchers and schedulers, runner),
recorded in MLflow from the driver (tracking) and shown live on the console."""
