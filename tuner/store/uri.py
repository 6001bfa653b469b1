"""Tracking-store URIs: the file of a `sqlite:///` URI, such a URI made absolute, and a server's
address without its credentials."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

SQLITE = "sqlite:///"
DEFAULT_URI = "sqlite:///mlflow.db"  # the store read when none is named, nor MLFLOW_TRACKING_URI
IN_MEMORY = ("sqlite://", SQLITE + ":memory:")  # SQLAlchemy's in-memory databases
KEPT_NOTHING = ("is an in-memory database, which keeps nothing once the command ends (tuner "
                "best, replay, report and search --resume read the store later): give "
                "sqlite:///FILE")


def in_memory(uri: str) -> bool:
    """Whether a tracking URI names an in-memory sqlite database."""
    return uri.partition("?")[0] in IN_MEMORY


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI, or None for another kind of store."""
    return Path(uri.removeprefix(SQLITE).partition("?")[0]) if uri.startswith(SQLITE) else None


def server_address(uri: str) -> str:
    """An `mlflow server` URI without its user and password, query or fragment, and no trailing
    "/" (ValueError when it is no valid URL)."""
    parts = urllib.parse.urlsplit(uri.rstrip("/"))
    return parts._replace(netloc=parts.netloc.rpartition("@")[2], query="",
                          fragment="").geturl().rstrip("/")


def absolute_uri(uri: str | None) -> str | None:
    """A sqlite URI with a relative path made absolute: a resumed study, or a command written
    for later (an exported study, a report's replay line), finds the same file from anywhere."""
    if uri is None or not uri.startswith(SQLITE) or uri.startswith(SQLITE + "/") \
            or in_memory(uri):
        return uri
    return SQLITE + str(Path(uri[len(SQLITE):]).resolve())
