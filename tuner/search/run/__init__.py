"""A study's run on Ray Tune: Ray's start-up and its --address checked, the Tuner, and the live view
and summary on the console."""
