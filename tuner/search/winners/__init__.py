"""The winners checked: the best trials trained again with further seeds, and the logged retraining
that a seed check and `tuner replay` share."""
