"""What the `tuner search` tests share: running it, study files, stores, MLflow runs, processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TUNER = Path(sys.executable).with_name("tuner")
ENV = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},  # the tests' store
       "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
       "PYTHONFAULTHANDLER": "1"}  # SIGABRT prints every thread's stack
UV = os.environ.get("UV") or shutil.which("uv")  # (`uv run` names itself in UV)


def run_tuner(args: list[str], cwd: Path, timeout: float = 420,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the `tuner` command in `cwd` and return it finished (output captured as text); one
    that outlives `timeout` is aborted and the test fails with the stacks it was stuck in."""
    proc = subprocess.Popen([str(TUNER), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or ENV)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"tuner {' '.join(args)} still ran after {timeout} s; its output:\n"
                    f"{out[-4000:]}\n{err[-20000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start_search(space: Path, uri: str, storage: Path, cwd: Path, *extra: str,
                 env: dict[str, str] | None = None, stdout: Any = subprocess.PIPE,
                 stderr: Any = subprocess.PIPE) -> subprocess.Popen:
    """`tuner search --space space` on `uri` and `storage`, started in the background in `cwd`."""
    return subprocess.Popen([str(TUNER), "search", "--space", str(space), "--tracking-uri", uri,
                             "--storage", str(storage), *extra], cwd=cwd, env=env or ENV,
                            stdout=stdout, stderr=stderr, text=True)


def resume_to_the_end(name: str, storage: Path, cwd: Path, uri: str, completed: int,
                      *extra: str, env: dict[str, str] | None = None
                      ) -> tuple[subprocess.CompletedProcess, list]:
    """`tuner search --resume` of study `name` (with `extra` options), which must finish with
    `completed` completed trials: the command and the study's trial runs."""
    proc = run_tuner(["search", "--resume", "--name", name, "--storage", str(storage), *extra],
                     cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, parent, runs = mlflow_runs(uri, name)
    assert parent.info.status == "FINISHED"
    assert [r.data.tags["tuner.status"] for r in runs] == ["completed"] * completed
    return proc, runs


def tune_trials(study_dir: Path) -> dict[str, dict]:
    """Each trial's last result in Tune's newest save of the study (its checkpoint among it)."""
    saved = json.loads(max(study_dir.glob("experiment_state-*.json")).read_text())
    trials = {}
    for trial, runtime in saved["trial_data"]:
        trial, runtime = json.loads(trial), json.loads(runtime)
        trials[trial["trial_id"]] = runtime["last_result"]
    return trials


def stopped_with_notice(driver: subprocess.Popen, uri: str, study_dir: Path | Callable[[], Path],
                        resume: str, eval_steps: int, tokens_per_step: int) -> dict[str, int]:
    """The study a stop with notice ended: exit 130 printing the `resume` command, each trial's
    run interrupted, its newest checkpoint at the step its last result names, at or past its
    last evaluation and for one at least between two (`eval_steps` apart); those steps.
    `study_dir` may be a function that gives the study's folder once the driver has ended (a
    copy of an object store's)."""
    from model.checkpoint import read_checkpoint
    from tuner.search.faults.stopping import STOP_CHECKPOINT, STOP_FLAG

    out, err = driver.communicate(timeout=60)
    if callable(study_dir):
        study_dir = study_dir()
    assert driver.returncode == 130, out + err
    assert "stopping: the running trials checkpoint their current step" in err, err
    assert f"continue it with: {resume}" in out
    client, parent, runs = mlflow_runs(uri, study_dir.name)
    assert parent.info.status == "KILLED"
    assert {r.data.tags["tuner.status"] for r in runs} == {"interrupted"}
    stopped_at = {}
    for trial_id, last in tune_trials(study_dir).items():
        run = next(r for r in runs if r.data.tags["tuner.trial_id"] == trial_id)
        evaluated = max(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        checkpoint = study_dir / f"trial_{trial_id}" / last["checkpoint_dir_name"]
        stopped_at[trial_id] = step = last[STOP_CHECKPOINT]
        assert int(read_checkpoint(checkpoint, mmap=True)["iteration"]) == step
        assert step * tokens_per_step >= evaluated == last["tokens"]
    assert any(step % eval_steps for step in stopped_at.values()), stopped_at  # between evals
    assert not (study_dir / STOP_FLAG).exists()
    return stopped_at


def fresh_store(folder: Path, template: Path) -> str:
    """A migrated, empty sqlite tracking store in `folder`: its URI."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def write_space(folder: Path, name: str, data_dir: Path, *, model: dict | None = None,
                hparams: dict | None = None, budget: dict | None = None,
                search: dict | None = None, tracking: dict | None = None,
                resources: dict | None = None) -> Path:
    """A study file of a tiny model (d_model 32, one layer, context 32) on `data_dir`."""
    study = {
        "name": name,
        "data": {"path": str(data_dir)},
        "model": {"vocab_size": 300, "context_length": 32, "d_model": 32, "num_layers": 1,
                  "num_heads": 2, "d_ff": 64, **(model or {})},
        "hparams": {"B": 16, **(hparams or {})},
        "budget": {"tokens": 40960, "eval_interval": 10, "eval_windows": 8, "seed": 0,
                   **(budget or {})},
        "search": {"max_concurrent": 2, **(search or {})},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0, "device": "cpu",
                      **(resources or {})},
        "tracking": {"log_checkpoints": "completed", **(tracking or {})},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False, allow_unicode=True))
    return path


def mlflow_runs(uri: str, study: str) -> tuple[Any, Any, list[Any]]:
    """The client, the study's parent run and its child runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("tuner.role") == "study"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return client, parents[0], children


def by_status(children: list[Any]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for run in children:
        grouped.setdefault(run.data.tags["tuner.status"], []).append(run)
    return grouped


def _assert_stopped_by(uri: str, children: list[Any], name: str, budget: int) -> None:
    """Scheduler `name` stopped some trials before the budget's end; the rest trained it all."""
    from mlflow import MlflowClient

    grouped = by_status(children)
    assert set(grouped) == {"completed", "stopped"}, grouped
    client = MlflowClient(tracking_uri=uri)
    for run in grouped["stopped"]:
        assert run.data.tags["tuner.status_detail"].startswith(f"stopped by {name} at ")
        assert _tokens(client, run) < budget
    assert all(_tokens(client, run) == budget for run in grouped["completed"])


def _assert_tokens_counted_once(client: Any, parent: Any, children: list[Any],
                                interval: int) -> None:
    """Each trial's tokens_trained counts the evaluation intervals it trained itself, each
    once: one per logged evaluation, less one where a PBT clone took a finished trial's end;
    not the donor's tokens a clone starts from. The study's is their sum."""
    counts = []
    for run in children:
        logged = len(client.get_metric_history(run.info.run_id, "val_loss"))
        history = client.get_metric_history(run.info.run_id, "tokens_trained")
        count = int(max(m.value for m in history))
        assert count == int(run.data.metrics["tokens_trained"])  # the latest, at its highest step
        assert count % interval == 0 and logged - 1 <= count // interval <= logged, (count, logged)
        counts.append(count)
    assert parent.data.metrics["study/tokens_trained"] == sum(counts)


def _wait_exited(pids: list[int], timeout: float = 60) -> None:
    """Wait until none of `pids` runs any more (gone, or a zombie left to be reaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [pid for pid in pids if _stat(pid)[:1] not in ([], ["Z"])]
        if not running:
            return
        time.sleep(0.2)
    pytest.fail(f"processes {running} outlived their driver by {timeout:.0f} s")


def _cut_short_as_tune_copies_it(folder: Path) -> None:
    """What a driver killed while Tune copies its state into the study's folder leaves: the
    experiment state emptied, the searcher's state half written."""
    max(folder.glob("experiment_state-*.json")).write_bytes(b"")
    searcher = max(folder.glob("searcher-state-*.pkl"))
    searcher.write_bytes(searcher.read_bytes()[:searcher.stat().st_size // 2])


def _wait_until(uri: str, driver: subprocess.Popen, ready: Any, timeout: float = 300,
                study: str = "killed") -> None:
    """Poll the trial runs of `study` until `ready(runs, tokens by run id)` holds."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, "the driver ended before it could be killed"
        runs = _trial_runs(client, study)
        if ready(runs, {r.info.run_id: _tokens(client, r) for r in runs}):
            return
        time.sleep(0.5)
    pytest.fail("the study did not get there in time")


def _tokens(client: Any, run: Any) -> int:
    history = client.get_metric_history(run.info.run_id, "val_loss")
    return max((m.step for m in history), default=0)


def _trial_runs(client: Any, study: str) -> list[Any]:
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [r for r in runs if r.data.tags.get("tuner.role") == "trial"]


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, parent, ...); [] if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def sigkill_driver(driver: subprocess.Popen) -> None:
    """SIGKILL a `tuner search` driver and wait for its trial processes, which checkpoint a second
    or two longer, to exit."""
    trials = [pid for pid, cmd in _descendants(driver.pid) if cmd.startswith("ray::ImplicitFunc")]
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    _wait_exited(trials)


def _descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `root`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            parents[int(entry.name)] = int(stat[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid:
                frontier.append(child)
                try:
                    cmd = (Path("/proc") / str(child) / "cmdline").read_bytes()
                except OSError:
                    continue
                found.append((child, cmd.replace(b"\0", b" ").decode(errors="replace").strip()))
    return found


def search_refused(tmp_path: Path, space: Path, uri: str) -> str:
    """`tuner search` of `space` recording to `uri`: exit 2 before Ray starts; stderr on a line."""
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri, "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert not (tmp_path / "ray").exists()
    return " ".join(proc.stderr.split())

