"""Connecting to a tracking store (a sqlite file, an `mlflow server`, a Postgres or MySQL
database): the checks that fail fast and say why, then an MlflowClient that has answered."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tuner.errors import TrackingError, UserError, reason
from tuner.store.redact import remember
from tuner.store.sqlite_store import make_or_check, read
from tuner.store.uri import KEPT_NOTHING, absolute_uri, in_memory, server_address, sqlite_file

# MLflow's tracking stores ("" a folder's path); others fail deep inside MLflow's registry
STORE_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql",
                 "databricks", "databricks-uc", "uc")
DATABASE_CONNECT_TIMEOUT_S = 10  # a host that drops packets, or takes them and never answers
# SQLAlchemy's database drivers (the module it imports → how to install it); psycopg is the
# driver of a bare postgresql:// in SQLAlchemy 2.1, and the project's `postgres` extra
DRIVERS = {"psycopg": "uv sync --extra postgres (or pip install 'psycopg[binary]')",
           "psycopg2": "pip install psycopg2-binary", "pymysql": "pip install pymysql",
           "MySQLdb": "pip install mysqlclient", "pyodbc": "pip install pyodbc"}


def connect(uri: str) -> Any:
    """An MlflowClient for `uri` that has answered; TrackingError if the store cannot be reached."""
    from mlflow import MlflowClient

    remember(uri)
    scheme = urlsplit(uri).scheme.partition("+")[0]  # postgresql+psycopg2: a driver named
    if scheme not in STORE_SCHEMES:
        raise TrackingError(f"tracking store {uri}: unknown scheme {scheme!r}; use "
                            "sqlite:///FILE, http(s)://HOST:PORT of `mlflow server`, or a "
                            "postgresql:// or mysql:// database")
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    elif sqlite_file(uri) is None:
        _check_database(uri)
    try:
        with _creation_lock(uri):
            if (path := sqlite_file(uri)) is not None and not in_memory(uri):
                make_or_check(path, uri)
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure here means the store is unusable
        raise TrackingError(f"tracking store {uri} cannot be used: {reason(err)}") from None
    return client


@contextlib.contextmanager
def _creation_lock(uri: str) -> Iterator[None]:
    """Held while a sqlite store is made or opened: MLflow's tracking store creates a new file's
    tables without a lock, so two studies starting together on one new file failed in its
    migrations."""
    path = sqlite_file(uri)
    if path is None:
        yield
        return
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()
    # neither truncated nor followed if a link: the folder is private, but belt and braces
    lock = os.open(_lock_folder() / f"sqlite-{key[:16]}.lock",
                   os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)


def _lock_folder() -> Path:
    """This user's folder for tuner's locks, <tmp>/tuner-UID (0o700), shared by their processes;
    UserError when that name is a symlink, not a folder, or another user's."""
    folder = Path(tempfile.gettempdir()) / f"tuner-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    what = ("a symlink" if stat.S_ISLNK(info.st_mode) else
            "not a folder" if not stat.S_ISDIR(info.st_mode) else
            f"owned by uid {info.st_uid}" if info.st_uid != os.getuid() else None)
    if what:
        raise UserError(f"{folder}: {what}, not this user's own folder for tuner's locks; "
                        "remove it, or set TMPDIR to another folder")
    return folder


def _check_server(uri: str) -> None:
    """Fail fast on an unreachable `mlflow server` (the client would retry for minutes)."""
    import http.client
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(server_address(uri) + "/health", timeout=10) as response:
            response.read()
    except urllib.error.HTTPError as err:  # something answered: not an MLflow server, maybe
        raise TrackingError(f"tracking server {uri} answered HTTP {err.code} ({err.reason}) at "
                            "/health: is it an MLflow tracking server (`mlflow server`)?") from None
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(f"tracking server {uri} is not reachable "
                            f"({getattr(err, 'reason', err)})") from None
    except (ValueError, http.client.InvalidURL):  # their text may quote part of a password
        raise TrackingError(f"tracking URI {uri}: not a valid URL; check its host and port, and "
                            "percent-encode a '#', '?' or '/' in its user or password") from None


def _check_database(uri: str) -> None:
    """Fail fast on a database store that does not answer or whose driver refuses the URI's
    options (MLflow retries for a minute and a half, with a warning at each try); other failures
    are left to MLflow to name."""
    import sqlalchemy

    try:
        url = sqlalchemy.engine.make_url(uri)
        # without it libpq and the MySQL drivers wait for the OS's TCP timeout, or for ever
        timeout = ({"connect_timeout": DATABASE_CONNECT_TIMEOUT_S}
                   if url.get_backend_name() in ("postgresql", "mysql") else {})
        engine = sqlalchemy.create_engine(url, connect_args=timeout)
    except ModuleNotFoundError as err:  # the URI's driver: MLflow would print its traceback
        install = DRIVERS.get(err.name or "", f"pip install {err.name}")
        raise TrackingError(f"tracking store {uri}: its database driver {err.name} is not "
                            f"installed; install it with {install}") from None
    except Exception:  # noqa: BLE001 - not a database URI SQLAlchemy knows: MLflow's to judge
        return
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as err:  # refused, timed out, no such host, a bad option
        raise TrackingError(f"tracking store {uri} cannot be used: {reason(err.orig or err)}"
                            ) from None
    except Exception:  # noqa: BLE001 - an error of the database's own: MLflow names it
        return
    finally:
        engine.dispose()


def connect_existing(uri: str) -> Any:
    """An MlflowClient of an existing store that has answered once; TrackingError when the store
    is missing, down or unusable (a missing sqlite file is not created: nothing here writes
    one)."""
    if not uri.strip():
        raise TrackingError("the tracking URI is empty: pass the store the study was recorded in "
                            "with --tracking-uri")
    if in_memory(uri):
        raise TrackingError(f"tracking store {uri} {KEPT_NOTHING}")
    uri = absolute_uri(uri)  # as the commands and files it writes name it, for later use
    path = sqlite_file(uri)
    if path is not None and not path.is_file():
        raise TrackingError(f"tracking store {uri}: no such file {path}; pass the store the study "
                            "was recorded in with --tracking-uri")
    if path is not None and not holds_mlflow_tables(path, uri):
        raise TrackingError(f"tracking store {uri}: {path} is not an MLflow store (an empty file "
                            "or another database); pass the store the study was recorded in")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one file at a time
    return connect(uri)


def holds_mlflow_tables(path: Path, uri: str) -> bool:
    """Whether a sqlite file holds MLflow's tables (MLflow would create them in any other);
    UserError when it cannot be read at all."""
    import sqlite3

    try:
        return bool(read(path, uri, "SELECT name FROM sqlite_master WHERE type = 'table' AND "
                                    "name = 'experiments'"))
    except sqlite3.DatabaseError:  # not a database
        return False


def new_sqlite_store(uri: str) -> bool:
    """Whether `uri` is a sqlite file that does not exist yet, or is empty; TrackingError if it
    cannot be made, or is a database of something else."""
    path = sqlite_file(uri)
    if path is None:
        return False
    if path.exists() and path.stat().st_size:
        if not holds_mlflow_tables(path, uri):  # MLflow would add its own
            raise TrackingError(f"tracking store {uri}: {path} is another database, not an MLflow "
                                "store; pass a new file or an MLflow store")
        return False
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise TrackingError(f"tracking store {uri} cannot be used: {path.parent} is not a folder "
                            "this user can write to")
    return True


def open_client(uri: str) -> Any:
    """An MlflowClient for `uri`, unchecked: a store `connect` has checked already (the study's
    recorder opens it again on Tune's driver)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)
