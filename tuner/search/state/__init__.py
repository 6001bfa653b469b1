"""The study's saved state beside Tune's, and what `--resume` does with it: recovery from a driver
killed mid-save, and extension to more samples."""
