"""A study submitted to a Ray cluster's job server (`ray job submit`), as docs/gpu-and-clusters.md
shows: one that finishes, and one stopped with `ray job stop` that a second job resumes to the
same finish, with the study's state in a bucket (moto's S3 server). Real Ray (a head with its
dashboard), an MLflow server and CPU trials."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from services import ServiceUnavailable, mlflow_server, ray_head
from studies import ENV, TUNER, _wait_until, fresh_store, mlflow_runs, write_space

EVAL_STEPS, TOKENS_PER_STEP = 100, 16 * 32  # B 16, context 32
RAY = Path(sys.executable).with_name("ray")
STOP_WAIT_S = 120  # RAY_JOB_STOP_WAIT_TIME_S: Ray's SIGKILL after its SIGTERM, past the stop


def _ray_job(dashboard: str, env: dict[str, str], command: str, *args: str) -> str:
    """`ray job COMMAND ARGS` against the job server at `dashboard`: its output."""
    done = subprocess.run([str(RAY), "job", command, "--address", dashboard, *args], check=False,
                          env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _submit(dashboard: str, env: dict[str, str], job: str, *command: str) -> None:
    """Submit `tuner COMMAND` as job `job`, without waiting for it."""
    runtime_env = json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)}})
    _ray_job(dashboard, env, "submit", "--submission-id", job, "--no-wait",
             "--runtime-env-json", runtime_env, "--", str(TUNER), *command)


class _Job:
    """A submitted job, as `_wait_until` polls a driver: running until `ray job status` says its
    status is final. (Not Ray's JobSubmissionClient: a process reads Ray's token settings once,
    and an earlier test's Ray in this worker read them without a token.)"""

    def __init__(self, dashboard: str, env: dict[str, str], job: str) -> None:
        self.dashboard, self.env, self.job = dashboard, env, job

    def poll(self) -> int | None:
        said = _ray_job(self.dashboard, self.env, "status", self.job)
        status = said.partition(f"Status for job '{self.job}': ")[2].split()[0]
        return None if status in ("PENDING", "RUNNING") else 1


def _ended(dashboard: str, env: dict[str, str], job: str) -> str:
    """`ray job logs --follow` of job `job`: its console, then how it ended."""
    return _ray_job(dashboard, env, "logs", "--follow", job)


@pytest.mark.slow
def test_a_study_as_a_ray_job_finishes_and_one_stopped_with_ray_job_stop_resumes_to_it(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path, s3,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As docs/gpu-and-clusters.md submits it: the study's state in a bucket, MLflow on a server
    whose artifacts are in it, the cluster's own credentials (the head's environment, as an
    instance role; none in the job). `ray job stop` is a stop with notice: the trials checkpoint,
    the job's console (`ray job logs`) ends with the resume command, and a second job resuming it
    ends where the study submitted beside it, never stopped, ended: the same val_loss at every
    evaluation."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the head's working copies
    search = {"algorithm": "grid", "scheduler": "none"}
    # 24 evaluations: `ray job stop` (a CLI that takes seconds to start, after a poll that does
    # too) comes after the first, while the study still runs
    budget = {"tokens": 24 * EVAL_STEPS * TOKENS_PER_STEP, "eval_interval": EVAL_STEPS}
    spaces = {name: write_space(tmp_path, name, dataset, budget=budget, search=search,
                                hparams={"lr_max": {"grid": [1e-2, 3e-3]}})
              for name in ("whole", "stopped")}
    backend = fresh_store(tmp_path / "server", mlflow_store_template)
    with mlflow_server(backend, tmp_path / "server" / "artifacts",
                       destination=f"s3://{s3.bucket}/mlflow") as uri:
        try:
            with ray_head(num_cpus=2, dashboard=True) as head:
                env, web = {**ENV, **head.env}, head.dashboard
                study = ["--tracking-uri", uri, "--storage", s3.uri(), "--address", head.address]
                _submit(web, env, "whole", "search", "--space", str(spaces["whole"]), *study)
                assert "Job 'whole' succeeded" in (logs := _ended(web, env, "whole")), logs

                _submit(web, env, "stopped", "search", "--space", str(spaces["stopped"]), *study)
                _wait_until(uri, _Job(web, env, "stopped"), lambda runs, tokens:
                            len(tokens) == 2 and
                            min(tokens.values()) >= EVAL_STEPS * TOKENS_PER_STEP,
                            study="stopped")
                stop = _ray_job(web, env, "stop", "stopped")
                console = _ended(web, env, "stopped")
                assert "Job 'stopped' was stopped" in stop, console
                assert "stopping: the running trials checkpoint their current step" in console
                resume = " ".join(console.partition("continue it with:")[2].split())  # unwrapped
                assert resume.startswith("tuner search --resume --name stopped --storage "
                                         f"{s3.uri()}"), console
                _, parent, runs = mlflow_runs(uri, "stopped")
                assert parent.info.status == "KILLED"  # as tuner's own stop leaves it
                assert {r.data.tags["tuner.status"] for r in runs} == {"interrupted"}

                _submit(web, env, "resumed", "search", "--resume", "--name", "stopped",
                        "--storage", s3.uri(), "--address", head.address)
                assert "Job 'resumed' succeeded" in (logs := _ended(web, env, "resumed")), logs
        except ServiceUnavailable as exc:
            pytest.skip(str(exc))
        curves = {}
        for name in ("whole", "stopped"):
            client, parent, runs = mlflow_runs(uri, name)
            assert parent.info.status == "FINISHED"
            assert [r.data.tags["tuner.status"] for r in runs] == ["completed"] * 2
            curves[name] = {r.data.params["lr_max"]: sorted(
                (m.step, m.value) for m in client.get_metric_history(r.info.run_id, "val_loss"))
                for r in runs}
    assert curves["stopped"] == curves["whole"]
    assert any(key.startswith("studies/stopped/experiment_state-") for key in s3.keys(""))
    for secret in (s3.key_id, s3.secret):
        assert secret not in console + logs
