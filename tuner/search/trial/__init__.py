"""What runs inside a trial: the Tune trainable (one call of the trainer) and its working files."""
