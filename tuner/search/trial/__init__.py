"""What runs inside a trial: the Tune trainable (one call of the trainer) and its working files;
for a replayed study, the table of learning curves that answers its trials instead."""
