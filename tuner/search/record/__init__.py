"""The study's MLflow record, written from the driver: the Tune callback, the runs' notes, and what
the study ran with (provenance)."""
