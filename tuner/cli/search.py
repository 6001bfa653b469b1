"""`tuner search`: its options, parsed and handed to the study's lifecycle, which runs it
(tuner.search.lifecycle)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuner.cli.args import storage as storage_location


def search(
    space: Annotated[Path | None, typer.Option(
        "--space", help="study file (YAML); optional with --resume", dir_okay=False)] = None,
    name: Annotated[str | None, typer.Option(
        help="study name (default: the --space file's)")] = None,
    num_samples: Annotated[int | None, typer.Option(
        min=1, help="trials to run (a transfer study's: samples, each run at every size); with "
        "--resume, a larger count extends the study")] = None,
    max_concurrent: Annotated[int | None, typer.Option(min=1, help="trials at once")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="seed of the searcher")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: the file's, else $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db)")] = None,
    storage: Annotated[str, typer.Option(
        help="folder, or object store URI (s3://BUCKET/PREFIX), for Ray Tune's trial state and "
        "checkpoints", parser=storage_location, metavar="<dir|uri>")] = "ray_results",
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to run on (default: a local Ray on this machine)")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="continue the study NAME after its driver stopped")] = False,
    warm_start: Annotated[str | None, typer.Option(
        "--warm-start", metavar="STUDY", help="start the searcher from the finished trials of "
        "an earlier study with the same space, in the same tracking store")] = None,
    curve_table: Annotated[Path | None, typer.Option(
        "--curve-table", hidden=True, dir_okay=False, help="benchmarks: answer the trials from "
        "this table of learning curves instead of training (docs/curves.md)")] = None,
) -> int:
    """Run a study: Ray Tune schedules trials of the trainer and MLflow records every run."""
    from tuner.search import lifecycle

    return lifecycle.run(lifecycle.Request(
        space=space, name=name, num_samples=num_samples, max_concurrent=max_concurrent, seed=seed,
        tracking_uri=tracking_uri, storage=storage, address=address, resume=resume,
        warm_start=warm_start, curve_table=curve_table)).exit_code  # the one path of tuner.search from Python too
