"""The MLflow layout of a study (docs/mlflow_layout.md): its tags and metrics, and how its runs
are found. Both the recorder that writes them and the commands that read them use it; it imports
neither Ray nor torch, so reading a study loads neither."""

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

from tuner.errors import UserError, reason
from tuner.store_uri import server_address, sqlite_file

METRICS = ("train_loss", "val_loss", "val_ppl", "lr", "grad_norm", "tokens_per_s", "mfu",
           "elapsed_s")
STUDY_TAG, TRIAL_TAG = "tuner.study", "tuner.trial_id"
RESUMED_COMMIT_TAG = "tuner.git_commit_resumed"
ROLE_TAG, STATUS_TAG = "tuner.role", "tuner.status"
SEARCHED_TAG = "tuner.searched"  # a trial run's searched params; logged last when it starts
PBT_TAG = "tuner.pbt_config"  # the values PBT last gave a trial (JSON)
SYMBOLS_TAG = "tuner.symbols"  # a trial run's param names -> their symbols (JSON)
NOTE_TAG = "mlflow.note.content"  # a run's description: what its page in MLflow's UI shows first
# The parent run's metrics: names of their own, so MLflow's UI charts them apart from the trials'
STUDY_PREFIX = "study/"
# MLflow's tracking stores ("" a folder's path); others fail deep inside MLflow's registry
STORE_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql",
                 "databricks", "databricks-uc", "uc")
DATABASE_CONNECT_TIMEOUT_S = 10  # a host that drops packets, or takes them and never answers
DEVICE_TAG = "tuner.device"  # what the trial trained on: cpu, or cuda with the GPU's model
# A failed trial's: "trainer" (it raised; the searcher was told the worst val_loss) or "process"
# (its process kept failing and Tune failed it: the searcher left it out)
FAILED_IN_TAG = "tuner.failed_in"
# which checkpoint -> (artifact folder, tag of its sha256); the file is checkpoint.pt in both
CHECKPOINTS = {"final": ("checkpoint", "tuner.checkpoint_sha256"),
               "mid": ("checkpoint_mid", "tuner.checkpoint_mid_sha256")}


def connect(uri: str) -> Any:
    """An MlflowClient for `uri` that has answered; UserError if the store cannot be reached."""
    from urllib.parse import urlsplit

    from mlflow import MlflowClient

    scheme = urlsplit(uri).scheme.partition("+")[0]  # postgresql+psycopg2: a driver named
    if scheme not in STORE_SCHEMES:
        raise UserError(f"tracking store {uri}: unknown scheme {scheme!r}; use sqlite:///FILE, "
                        "http(s)://HOST:PORT of `mlflow server`, or a postgresql:// or mysql:// "
                        "database")
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    elif sqlite_file(uri) is None:
        _check_database(uri)
    try:
        with _creation_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - any failure here means the store is unusable
        raise UserError(f"tracking store {uri} cannot be used: {reason(err)}") from None
    return client


@contextlib.contextmanager
def _creation_lock(uri: str) -> Iterator[None]:
    """Held while a sqlite store is opened: MLflow's tracking store creates a new file's tables
    without a lock, so two studies starting together on one new file failed in its migrations."""
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
        raise UserError(f"tracking server {uri} answered HTTP {err.code} ({err.reason}) at "
                        "/health: is it an MLflow tracking server (`mlflow server`)?") from None
    except (urllib.error.URLError, OSError) as err:
        raise UserError(f"tracking server {uri} is not reachable ({getattr(err, 'reason', err)})"
                        ) from None
    except (ValueError, http.client.InvalidURL):  # their text may quote part of a password
        raise UserError(f"tracking URI {uri}: not a valid URL; check its host and port, and "
                        "percent-encode a '#', '?' or '/' in its user or password") from None


def _check_database(uri: str) -> None:
    """Fail fast on a database store that does not answer (MLflow retries for a minute and a
    half, with a warning at each try); other failures are left to MLflow to name."""
    import sqlalchemy

    try:
        url = sqlalchemy.engine.make_url(uri)
        # without it libpq and the MySQL drivers wait for the OS's TCP timeout, or for ever
        timeout = ({"connect_timeout": DATABASE_CONNECT_TIMEOUT_S}
                   if url.get_backend_name() in ("postgresql", "mysql") else {})
        engine = sqlalchemy.create_engine(url, connect_args=timeout)
    except Exception:  # noqa: BLE001 - not a database URI SQLAlchemy knows: MLflow's to judge
        return
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as err:  # refused, timed out, no such host
        raise UserError(f"tracking store {uri} cannot be used: {reason(err.orig or err)}"
                        ) from None
    except Exception:  # noqa: BLE001 - a driver missing, say: MLflow says what it lacks
        return
    finally:
        engine.dispose()


def experiment_id(client: Any, name: str) -> str:
    """The id of experiment `name`, created when missing."""
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def find_parent(client: Any, experiment: str, study: str) -> Any | None:
    """The parent run of study `study` in `experiment`, or None; UserError when the experiment is
    deleted (MLflow keeps its name, and refuses new runs in it)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    if exp.lifecycle_stage == "deleted":
        raise UserError(f"MLflow experiment {experiment!r} at {client.tracking_uri} is deleted: "
                        f"restore it (`mlflow experiments restore --experiment-id "
                        f"{exp.experiment_id}`), remove it for good (`mlflow gc`), or record the "
                        "study in another (--name, or tracking.experiment in the study file)")
    runs = client.search_runs([exp.experiment_id], max_results=1, filter_string=(
        f"tags.`{STUDY_TAG}` = '{study}' AND tags.`{ROLE_TAG}` = 'study'"))
    return runs[0] if runs else None


def child_runs(client: Any, experiment_id_: str, parent_id: str) -> list[Any]:
    """Every run under a parent that is not deleted."""
    return client.search_runs([experiment_id_],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              max_results=50000)
