"""Reproduce and inspect what a study found: replay a trial, rank trials, report, generate text.

Everything here reads, through tuner.store, the MLflow records `tuner search` writes
(docs/mlflow_layout.md).
"""
