"""The tracking store (search/record/tracking.py, store/): a server, sqlite, stores that fail."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from services import ServiceUnavailable, free_port, mlflow_server, ray_head
from studies import (
    ENV,
    _wait_until,
    fresh_store,
    mlflow_runs,
    resume_to_the_end,
    run_tuner,
    search_refused,
    start_search,
    write_space,
)


@pytest.mark.slow
def test_tracking_server_lost_mid_study_stops_it(tmp_path: Path, dataset: Path) -> None:
    """The `mlflow server` dies mid-study: once MLflow's retries are spent (none here) the study
    stops, saying which store failed and how to continue, instead of hanging on every record;
    with the server back, --resume finishes it in the same runs."""
    backend, artifacts = f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts"
    space = write_space(tmp_path, "lost", dataset, budget={"tokens": 61440},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 3})
    storage = tmp_path / "ray"
    env = {**ENV, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    try:
        with mlflow_server(backend, artifacts) as uri:
            driver = start_search(space, uri, storage, tmp_path, env=env)
            _wait_until(uri, driver, lambda runs, tokens: max(tokens.values(), default=0) > 0,
                        study="lost")
        out, err = driver.communicate(timeout=300)
        assert driver.returncode == 1, out + err
        said = " ".join(out.split())
        assert f"error: tracking store {uri} failed: " in said and "; the study stopped" in said
        assert ("once the store answers again, continue it with: tuner search --resume --name "
                f"lost --storage {storage}") in said

        with mlflow_server(backend, artifacts, port=int(uri.rsplit(":", 1)[1])):
            proc, _ = resume_to_the_end("lost", storage, tmp_path, uri, completed=3, env=env)
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    assert "View run" not in proc.stdout  # MLflow's line per ended run: the summary names it


@pytest.mark.slow
def test_tracking_failure_as_a_trial_ends_stops_the_study(tmp_path: Path, dataset: Path,
                                                          mlflow_store_template: Path) -> None:
    """Tune catches the errors of a trial's end (and would retry the finished trial): a store that
    fails there still stops the study, and once it is back --resume finishes it in the same runs."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "ends", dataset, budget={"tokens": 122880},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 3,
                                "max_concurrent": 1})
    storage, artifacts, aside = tmp_path / "ray", tmp_path / "mlruns", tmp_path / "mlruns.aside"
    driver = start_search(space, uri, storage, tmp_path)
    _wait_until(uri, driver, lambda runs, tokens: max(tokens.values(), default=0) > 0,
                study="ends")
    artifacts.rename(aside)
    artifacts.write_text("")  # a file: the first trial's sample.txt, at its end, cannot be written
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 1, out + err
    said = " ".join(out.split())
    assert f"error: tracking store {uri} failed: " in said and "; the study stopped" in said

    artifacts.unlink()
    aside.rename(artifacts)
    _, runs = resume_to_the_end("ends", storage, tmp_path, uri, completed=3)
    assert not [r for r in runs if "tuner.retries" in r.data.tags]  # none was run twice


@pytest.mark.slow
def test_study_on_mlflow_server_and_ray_cluster(tmp_path: Path, dataset: Path,
                                                mlflow_store_template: Path) -> None:
    """`mlflow server` and `ray start --head`, both on 127.0.0.1: `--tracking-uri http://…` and
    `--address` work as the embedded defaults do (one study for both: each costs a start-up). A
    password in the URI reaches neither the output nor anything MLflow stores."""
    backend = fresh_store(tmp_path / "server", mlflow_store_template)
    space = write_space(tmp_path, "served", dataset,
                        hparams={"lr_max": {"loguniform": [1e-3, 1e-2]}},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 2},
                        tracking={"log_checkpoints": "best"})
    try:
        with mlflow_server(backend, tmp_path / "server" / "artifacts") as uri, ray_head() as head:
            secret_uri = uri.replace("http://", "http://tuner:s3cret pw'\"Zk9@")
            proc = run_tuner(["search", "--space", str(space), "--tracking-uri", secret_uri,
                              "--storage", str(tmp_path / "ray"), "--address", head.address],
                             cwd=tmp_path, env={**ENV, **head.env})
            assert proc.returncode == 0, proc.stdout + proc.stderr
            client, parent, children = mlflow_runs(uri, "served")
            best = parent.data.tags["tuner.best_run_id"]
            checkpoints = {r.info.run_id: [a.path for a in client.list_artifacts(
                r.info.run_id, "checkpoint")] for r in children}
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert {r.data.tags["tuner.status"] for r in children} == {"completed"}
    assert checkpoints.pop(best) == ["checkpoint/checkpoint.pt"]
    assert list(checkpoints.values()) == [[]]  # log_checkpoints: best
    assert not (tmp_path / "mlruns").exists()  # the artifacts went to the server
    said = proc.stdout + proc.stderr  # the password's two ends, in any encoding
    assert "tuner:***@127.0.0.1" in proc.stdout and "s3cret" not in said and "Zk9" not in said
    stored = [p for p in (tmp_path / "server").rglob("*") if p.is_file()]  # runs and artifacts
    assert len(stored) > 5 and not [p for p in stored if re.search(b"s3cret|Zk9", p.read_bytes())]


def test_a_study_name_taken_in_another_experiment_fails_before_ray(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """The read commands find a study by name alone: a second study of one name, recorded in
    another experiment, is refused before anything starts."""
    from mlflow import MlflowClient

    uri = fresh_store(tmp_path, mlflow_store_template)
    client = MlflowClient(tracking_uri=uri)
    first = client.create_experiment("first", artifact_location=(tmp_path / "a").as_uri())
    client.create_run(first, tags={"tuner.study": "twice", "tuner.role": "study"})
    space = write_space(tmp_path, "twice", dataset, tracking={"experiment": "second"})
    message = search_refused(tmp_path, space, uri)
    assert "MLflow experiment 'first' at" in message and "pick another --name" in message
    assert client.get_experiment_by_name("second") is None


def test_drivers_opening_one_new_sqlite_store_together_all_succeed(tmp_path: Path) -> None:
    """MLflow creates a new sqlite store's tables without a lock: drivers starting together on one
    new file used to fail in its migrations (`tuner search` exit 2) but the first."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = "import sys; from tuner.store.connect import connect; connect(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs


def _schema(store: Path) -> tuple[set[str], list]:
    """A sqlite store's tables and its alembic version rows."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(store)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        version = (db.execute("SELECT version_num FROM alembic_version").fetchall()
                   if "alembic_version" in tables else [])
    return tables, version


def _migrating(folder: Path) -> bool:
    """Whether MLflow has begun to write the store mlflow.db in `folder` (or its temporary copy)."""
    for name in ("mlflow.db", ".mlflow.db.creating"):
        with contextlib.suppress(FileNotFoundError):  # renamed into place as it was looked at
            if (folder / name).stat().st_size:
                return True
    return False


def test_a_stop_while_a_new_store_is_made_leaves_it_whole_or_absent(tmp_path: Path) -> None:
    """A new sqlite store is migrated under a temporary name and renamed into place: a stop or a
    kill at any moment of its migrations leaves it whole or absent (it left a half-migrated or an
    empty mlflow.db), and the next command makes it whole."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    from tuner.store.connect import connect

    store = tmp_path / "mlflow.db"
    code = ("import sys; from model.shell import stops_as_ctrl_c; stops_as_ctrl_c()\n"
            "from tuner.store.connect import connect; connect(sys.argv[1])")  # as `tuner` does
    head = _get_latest_schema_revision()
    for stop, delay in [(signal.SIGTERM, d) for d in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)] + [
            (signal.SIGKILL, 0.2)]:
        creator = subprocess.Popen([sys.executable, "-c", code, f"sqlite:///{store}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not _migrating(tmp_path):
            assert creator.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(delay)
        creator.send_signal(stop)
        creator.wait(timeout=60)
        left = sorted(p.name for p in tmp_path.iterdir())
        if store.exists():
            tables, version = _schema(store)
            assert version == [(head,)], (stop, delay, version)
            assert not [t for t in tables if t.startswith("_alembic_tmp_")]
            store.unlink()
            left.remove(store.name)
        killed = [".mlflow.db.creating", ".mlflow.db.creating-journal"]  # its journal if mid-write
        assert left == [] if stop == signal.SIGTERM else left in (killed[:1], killed), left
    connect(f"sqlite:///{store}")  # over what the kill left
    assert [p.name for p in tmp_path.iterdir()] == ["mlflow.db"]
    assert _schema(store)[1] == [(head,)]


def test_a_half_made_store_is_named_with_the_command_that_fixes_it(tmp_path: Path) -> None:
    """A store whose migrations were cut short (sqlite runs MLflow's DDL outside a transaction)
    failed every command with a raw SQL error: it is named half-made, and left as it is.
    Removing it is the fix where it holds no run; one that holds runs is to be upgraded."""
    import sqlite3

    import sqlalchemy
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow import MlflowClient
    from mlflow.store.db.utils import InitialBase, _get_alembic_config

    from tuner.errors import UserError
    from tuner.store.connect import connect

    store = tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"
    config = _get_alembic_config(uri)
    revisions = [r.revision for r in ScriptDirectory.from_config(config).walk_revisions()]
    engine = sqlalchemy.create_engine(uri)
    InitialBase.metadata.create_all(engine)  # as MLflow makes a new store
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revisions[len(revisions) // 2])
    engine.dispose()
    with contextlib.closing(sqlite3.connect(store)) as db, db:  # a stop after the migration's
        db.execute("UPDATE alembic_version SET version_num = ?",  # DDL, before its version
                   (revisions[len(revisions) // 2 + 1],))
    before = store.read_bytes()
    proc = run_tuner(["best", "--study", "any", "--tracking-uri", uri], cwd=tmp_path, timeout=120)
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f"tracking store {store} is half-made (a stop while it was being created): no run "
            f"was recorded in it; remove it (rm {store}) and run again") in said
    assert store.read_bytes() == before

    whole = tmp_path / "whole.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{whole}")
    client.create_run("0")
    with contextlib.closing(sqlite3.connect(whole)) as db, db:  # an older MLflow's store
        db.execute("UPDATE alembic_version SET version_num = ?", (revisions[1],))
    with pytest.raises(UserError, match=f"its 1 runs are in MLflow tables at schema version "
                       f"{revisions[1]}, .* back it up, then run mlflow db upgrade "
                       f"sqlite:///{whole}"):
        connect(f"sqlite:///{whole}")


def test_the_sqlite_creation_lock_follows_no_planted_link(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock was opened with "w" in the shared temp folder: a symlink planted at its name had
    its target truncated. It lives in the user's private <tmp>/tuner-UID now, which is refused
    when a symlink or not a folder (or another user's: root cannot show that here)."""
    from tuner.errors import UserError
    from tuner.store.connect import connect

    shared = tmp_path / "tmp"
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")

    def key(store: Path) -> str:
        return hashlib.sha256(str(store.resolve()).encode()).hexdigest()[:16]

    (shared / f"tuner-sqlite-{key(tmp_path / 'new.db')}.lock").symlink_to(victim)  # the old name
    connect(f"sqlite:///{tmp_path / 'new.db'}")
    private = shared / f"tuner-{os.getuid()}"
    assert victim.read_text() == "precious" and private.stat().st_mode & 0o777 == 0o700
    (private / f"sqlite-{key(tmp_path / 'two.db')}.lock").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic links"):
        connect(f"sqlite:///{tmp_path / 'two.db'}")
    shutil.rmtree(private)
    (tmp_path / "elsewhere").mkdir()
    for planted, said in ((lambda: private.symlink_to(tmp_path / "elsewhere"), "a symlink"),
                          (lambda: private.write_text("x"), "not a folder")):
        private.unlink(missing_ok=True)
        planted()
        with pytest.raises(UserError, match=f"{private}: {said}, not this user's own folder"):
            connect(f"sqlite:///{tmp_path / 'two.db'}")
    assert victim.read_text() == "precious" and not (tmp_path / "two.db").exists()
    assert not any((tmp_path / "elsewhere").iterdir())


def test_deleted_experiment_fails_before_ray(tmp_path: Path, dataset: Path,
                                             mlflow_store_template: Path) -> None:
    """MLflow keeps a deleted experiment's name and refuses runs in it: said before Ray starts."""
    from mlflow import MlflowClient

    uri = fresh_store(tmp_path, mlflow_store_template)
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("gone"))
    space = write_space(tmp_path, "gone", dataset)
    message = search_refused(tmp_path, space, uri)
    assert f"MLflow experiment 'gone' at {uri} is deleted: restore it" in message


def test_a_server_that_is_not_mlflow_is_named_as_such(tmp_path: Path, dataset: Path) -> None:
    """A tracking URI where some other web server answers: exit 2 saying what answered."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        proc = run_tuner(["search", "--space", str(write_space(tmp_path, "web", dataset)),
                          "--tracking-uri", uri, "--storage", str(tmp_path / "ray")],
                         cwd=tmp_path, timeout=120)
    finally:
        server.shutdown()
    assert proc.returncode == 2
    message = " ".join(proc.stderr.split())
    assert f"tracking server {uri} answered HTTP 501" in message, proc.stderr
    assert "at /health: is it an MLflow tracking server" in message
    assert not (tmp_path / "ray").exists()


def test_unreachable_tracking_store_fails_before_training(tmp_path: Path, dataset: Path) -> None:
    space = write_space(tmp_path, "offline", dataset)
    uri = f"http://127.0.0.1:{free_port()}"
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri, "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path, timeout=120)  # not MLflow's retries
    assert proc.returncode == 2 and uri in proc.stderr
    assert not (tmp_path / "ray").exists()
    space.write_text(space.read_text().replace(f"path: {dataset}", "source: synthetic"))
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri], cwd=tmp_path,
                     timeout=120)
    assert proc.returncode == 2 and uri in proc.stderr
    assert not (tmp_path / ".tuner").exists()  # no corpus prepared for a study that cannot run
    # A study file without tracking.uri goes where MLFLOW_TRACKING_URI points, as MLflow does
    proc = run_tuner(["search", "--space", str(space)], cwd=tmp_path, timeout=120,
                     env={**ENV, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 2 and uri in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
    # A database that refuses: one line at once, not MLflow's retries for a minute and a half
    uri = f"postgresql+psycopg2://tuner:secret@127.0.0.1:{free_port()}/mlflow"
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri], cwd=tmp_path,
                     timeout=120)
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "store postgresql+psycopg2://tuner:***@127.0.0.1:" in said
    assert "Connection refused" in said and "retried" not in said and "secret" not in said
    # One that takes the connection and never answers (libpq alone would wait for ever)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        uri = f"postgresql+psycopg2://tuner:secret@127.0.0.1:{silent.getsockname()[1]}/mlflow"
        proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri], cwd=tmp_path,
                         timeout=120)
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "failed: timeout expired" in said and "secret" not in said


def test_a_database_store_without_its_driver_names_the_package(tmp_path: Path,
                                                             dataset: Path) -> None:
    """A bare postgresql:// is psycopg 3's in SQLAlchemy 2.1, which only the `postgres` extra
    installs: "No module named 'psycopg'" became one line that says how to install it."""
    import importlib.util

    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg is installed here (uv sync --extra postgres)")
    space = write_space(tmp_path, "driverless", dataset)
    said = search_refused(tmp_path, space, "postgresql://tuner:secret@127.0.0.1:9/mlflow")
    assert ("tracking store postgresql://tuner:***@127.0.0.1:9/mlflow: its database driver "
            "psycopg is not installed; install it with uv sync --extra postgres (or pip install "
            "'psycopg[binary]')") in said, said
    assert "Traceback" not in said and "secret" not in said


def test_a_sqlite_file_of_another_application_is_refused_untouched(tmp_path: Path,
                                                                    dataset: Path) -> None:
    """MLflow would add its tables to any database it is pointed at (the read commands refuse
    one); an empty file is a new store."""
    import sqlite3

    other = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(other)) as db, db:
        db.execute("CREATE TABLE accounts (id INTEGER)")
    before = other.read_bytes()
    space = write_space(tmp_path, "foreign", dataset)
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", f"sqlite:///{other}",
                      "--storage", str(tmp_path / "ray")], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{other} is another database, not an MLflow store" in " ".join(proc.stderr.split())
    assert other.read_bytes() == before and not (tmp_path / "ray").exists()



def test_a_store_a_killed_writer_left_mid_transaction_is_read_again(tmp_path: Path) -> None:
    """A driver SIGKILLed inside an MLflow write leaves a hot journal, which a read-only
    connection cannot roll back ("attempt to write a readonly database"): the store's check rolls
    it back, as MLflow's next connection would, instead of refusing the store."""
    import sqlite3
    import subprocess
    import sys

    from tuner.store.connect import holds_mlflow_tables

    store = tmp_path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(store)) as db, db:
        db.execute("CREATE TABLE experiments (id INTEGER)")
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1]); db.execute('PRAGMA cache_size=1')\n"
        "db.execute('BEGIN'); db.execute('CREATE TABLE junk (x)')\n"
        "db.executemany('INSERT INTO junk VALUES (?)', [('y' * 1000,)] * 2000)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"), str(store)], check=False)
    assert killed.returncode == -9 and (tmp_path / "mlflow.db-journal").is_file()
    assert holds_mlflow_tables(store, f"sqlite:///{store}")
    assert not (tmp_path / "mlflow.db-journal").exists()
