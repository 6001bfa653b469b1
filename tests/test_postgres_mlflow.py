"""The services of docker/compose.yaml, for real and without containers: an MLflow tracking
server on a PostgreSQL backend store with served artifacts, and a Ray head whose tasks log to it.

PostgreSQL comes from the system (`.ci/run` installs Debian's postgresql); where it is absent these
tests skip and say so. The context managers live in tests/services.py for other end-to-end tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from services import Postgres, ServiceUnavailable, mlflow_server, postgres_server, ray_head

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Tracking:
    uri: str
    postgres: Postgres
    artifacts: Path


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracking]:
    """`mlflow server` on a fresh PostgreSQL database, artifacts in a temporary folder."""
    artifacts = tmp_path_factory.mktemp("mlflow") / "artifacts"
    try:
        with postgres_server() as pg, mlflow_server(pg.uri, artifacts) as uri:
            yield Tracking(uri, pg, artifacts)
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _no_ambient_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def _pg_rows(pg: Postgres, sql: str, *args: object) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password,
                            dbname=pg.database, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def test_run_round_trips_through_server_on_postgres(tracking: Tracking, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.uri)
    exp_id = client.create_experiment("postgres-round-trip")
    run = client.create_run(exp_id, run_name="trial-0")
    run_id = run.info.run_id
    client.log_param(run_id, "lr", "0.003")
    client.log_param(run_id, "optimizer", "adamw")
    for step, loss in enumerate([4.0, 3.1, 2.7]):
        client.log_metric(run_id, "val_loss", loss, step=step)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"d_model": 64, "lr": 0.003}))
    client.log_artifact(run_id, str(config))
    client.set_terminated(run_id)

    # Read back through the server.
    got = client.get_run(run_id)
    assert got.data.params == {"lr": "0.003", "optimizer": "adamw"}
    assert got.data.metrics["val_loss"] == pytest.approx(2.7)
    history = client.get_metric_history(run_id, "val_loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 4.0), (1, 3.1), (2, 2.7)]
    assert got.info.status == "FINISHED"
    assert got.info.artifact_uri.startswith("mlflow-artifacts:")  # served, not a client path
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.json"]
    fetched = Path(client.download_artifacts(run_id, "config.json", str(tmp_path / "dl")))
    assert json.loads(fetched.read_text()) == {"d_model": 64, "lr": 0.003}

    # The records are in PostgreSQL, the file under --artifacts-destination.
    rows = _pg_rows(tracking.postgres,
                    "SELECT key, value FROM params WHERE run_uuid = %s ORDER BY key", run_id)
    assert rows == [("lr", "0.003"), ("optimizer", "adamw")]
    steps = _pg_rows(tracking.postgres,
                     "SELECT step, value FROM metrics WHERE run_uuid = %s AND key = %s "
                     "ORDER BY step", run_id, "val_loss")
    assert steps == [(0, 4.0), (1, 3.1), (2, 2.7)]
    stored = list(tracking.artifacts.rglob("config.json"))
    assert len(stored) == 1 and run_id in stored[0].parts


RAY_DRIVER = textwrap.dedent("""
    import json, sys
    import ray

    address, tracking_uri = sys.argv[1], sys.argv[2]
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)

    @ray.remote(num_cpus=1)
    def trial(lr):
        import mlflow
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name("ray-trials")
        run = client.create_run(exp.experiment_id)
        client.log_param(run.info.run_id, "lr", lr)
        client.log_metric(run.info.run_id, "val_loss", 1.0 / lr)
        client.set_terminated(run.info.run_id)
        return run.info.run_id

    from mlflow.tracking import MlflowClient
    MlflowClient(tracking_uri=tracking_uri).create_experiment("ray-trials")
    print("RUN_IDS=" + json.dumps(ray.get([trial.remote(lr) for lr in (0.5, 0.25)])))
    ray.shutdown()
""")


def test_ray_head_tasks_log_to_the_server(tracking: Tracking) -> None:
    from mlflow.tracking import MlflowClient

    try:
        with ray_head(num_cpus=1) as head:  # one worker process: both tasks reuse it
            proc = subprocess.run([sys.executable, "-c", RAY_DRIVER, head.address, tracking.uri],
                                  capture_output=True, text=True, timeout=180,
                                  env={**os.environ, **head.env})
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    marked = [line for line in proc.stdout.splitlines() if line.startswith("RUN_IDS=")]
    assert len(marked) == 1, proc.stdout + proc.stderr
    run_ids = json.loads(marked[0].removeprefix("RUN_IDS="))
    assert len(set(run_ids)) == 2

    client = MlflowClient(tracking_uri=tracking.uri)
    exp = client.get_experiment_by_name("ray-trials")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    assert sorted((r.data.params["lr"], r.data.metrics["val_loss"]) for r in runs) == [
        ("0.25", 4.0), ("0.5", 2.0)]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_tuner_reads_the_postgres_store_and_masks_its_password(tracking: Tracking) -> None:
    """`tuner best` straight on the PostgreSQL store: the URI it names shows no password."""
    pg = tracking.postgres
    proc = subprocess.run([str(Path(sys.executable).with_name("tuner")), "best", "--study",
                           "nosuch", "--tracking-uri", pg.uri], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "250"}, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "no study 'nosuch'" in out and "it holds no study" in out
    assert f"{pg.user}:***@{pg.host}:{pg.port}" in out
    assert pg.password.split()[0] not in out and "q'\"x" not in out  # no part of it
