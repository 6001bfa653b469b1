"""The command line's options and parsers that several commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuner.errors import UserError
from tuner.store import uri

# the store a study was recorded in, as the commands that read one take it
TrackingUri = Annotated[str, typer.Option(
    envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI of the study")]
DEFAULT_URI = uri.DEFAULT_URI


def folder(value: str | Path) -> Path:
    """A folder option's value (`parser=folder`): "" is refused, since as a Path it is the
    current folder, where a study's state or a report would land among the user's files; so is
    a URI (`s3://bucket`), which as a Path is a folder `s3:` here."""
    if not value:
        raise typer.BadParameter("empty: give a folder (. for the current one)")
    if "://" in str(value):  # a default comes as a Path
        raise typer.BadParameter(f"{value} is a URI: give a folder of a file system")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise typer.BadParameter(f"{value} is a file, not a folder")
    return path


def storage(value: str | Path) -> str:
    """--storage's value (`parser=storage`): a folder as `folder` takes it, or an object store's
    URI (s3://bucket/prefix), which `tuner.store.object_store` checks."""
    from tuner.store.object_store import is_uri

    return str(value) if is_uri(value) else str(folder(value))


def check_new_file(option: str, path: Path) -> None:
    """UserError unless `path` is a regular file or a new name in a folder: a device, pipe or
    folder would take what is written and keep nothing."""
    if path.exists() and not path.is_file():
        raise UserError(f"{option} {path}: not a regular file (a device, pipe or folder); give "
                        "a file")
    if not path.absolute().parent.is_dir():
        raise UserError(f"{option} {path}: {path.parent} is not a folder")
