"""A sqlite tracking store's file: a new one made whole or not at all (migrated under a temporary
name in its folder, then renamed into place), and one found half-made named, with its fix."""

from __future__ import annotations

import contextlib
import os
import shlex
import sqlite3
from pathlib import Path
from typing import Any

from tuner.errors import TrackingError
from tuner.store.uri import SQLITE


def read(path: Path, uri: str, query: str) -> list[Any]:
    """The rows of `query` on the sqlite file `path`, read-only unless a writer killed mid-write
    left a hot journal to roll back; sqlite3.DatabaseError when it is no database, TrackingError
    when it cannot be read."""
    def rows(mode: str) -> list[Any]:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}",
                                                uri=True)) as db:
            return db.execute(query).fetchall()

    try:
        try:
            return rows("ro")
        except sqlite3.OperationalError as err:
            if "readonly" not in str(err):
                raise
            # a writer killed mid-transaction (a SIGKILLed driver) left a hot journal, which
            # only a connection that may write rolls back, as MLflow's next one would
            return rows("rw")
    except sqlite3.OperationalError as err:  # unreadable, locked: not a question of content
        raise TrackingError(f"tracking store {uri} cannot be used: {err}") from None


def make_or_check(path: Path, uri: str) -> None:
    """Create the store `path` when it is missing or an empty file; else TrackingError when it is
    half-made. Call it holding the store's creation lock."""
    if path.is_file() and path.stat().st_size:
        _check_whole(path, uri)
        return
    building = path.with_name(f".{path.name}.creating")  # one creator at a time: the lock's
    _remove(building)  # left by a creation killed outright
    try:
        from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine_with_retry

        # MLflow's own creation of a new store, on an engine of its own: MlflowClient would keep
        # one open on the name, which a later creation of the same store would find
        engine = create_sqlalchemy_engine_with_retry(SQLITE + str(building))
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(building, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a crash
        finally:
            os.close(folder)
    finally:
        _remove(building)


def _remove(building: Path) -> None:
    for left in (building, building.with_name(building.name + "-journal")):
        left.unlink(missing_ok=True)


def _check_whole(path: Path, uri: str) -> None:
    """TrackingError when the MLflow store `path` is not at this MLflow's schema: half-made by a
    creation cut short (it holds no run: removing it loses nothing), or another version's."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    try:
        tables = {name for (name,) in read(path, uri, "SELECT name FROM sqlite_master WHERE "
                                                      "type = 'table'")}
    except sqlite3.DatabaseError:  # no database: MLflow's error names it
        return
    if "experiments" not in tables:  # another application's database: the caller's to refuse
        return
    version = (read(path, uri, "SELECT version_num FROM alembic_version")
               if "alembic_version" in tables else [])
    head = _get_latest_schema_revision()
    if version == [(head,)] and not any(t.startswith("_alembic_tmp_") for t in tables):
        return
    runs = read(path, uri, "SELECT count(*) FROM runs")[0][0] if "runs" in tables else 0
    if not runs:
        raise TrackingError(f"tracking store {path} is half-made (a stop while it was being "
                            "created): no run was recorded in it; remove it "
                            f"(rm {shlex.quote(str(path))}) and run again")
    found = version[0][0] if version else "none"
    raise TrackingError(f"tracking store {uri}: its {runs} runs are in MLflow tables at schema "
                        f"version {found}, not this MLflow's {head} (an upgrade cut short, or "
                        "another MLflow's store): back it up, then run mlflow db upgrade "
                        f"{shlex.quote(uri)}")
