"""One study through four faults, resumed after each: a Ctrl-C under `uv run` (sent to the
process group as a terminal does, with uv's own copy 0.2 s later), then the loss of its Ray node
twice (its raylet, then its GCS, SIGKILLed, as the out-of-memory killer may choose either), then
a stop and a second one at once. A real local Ray and MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from studies import (
    ENV,
    REPO,
    TUNER,
    UV,
    _descendants,
    _wait_until,
    fresh_store,
    mlflow_runs,
    resume_to_the_end,
    stopped_with_notice,
    write_space,
)

# Evaluations far enough apart (about 0.5 s on an idle core) that a stop reaches a trial between
# two, as a stop usually does; 20 steps apart, both often stopped at one (a trial waits at each
# report for the driver, which was busy stopping).
NAME, EVAL_STEPS, TOKENS_PER_STEP = "faulted", 100, 16 * 32  # B 16, context 32


@dataclass
class Stopped:
    """How one run of the study ended: its exit code and output, the check that failed, and the
    MLflow statuses it left (the parent run's; each trial run's and its tuner.status)."""

    returncode: int
    out: str
    err: str
    failed: AssertionError | None
    parent: str
    trials: list[tuple[str, str]]


@dataclass
class Faults:
    storage: Path
    uri: str
    ctrl_c: Stopped
    node_lost: dict[str, Stopped]  # by the Ray server killed
    twice: Stopped  # stopped, then stopped again at once
    finished: Any  # the trial runs once resumed to the end


def _driver(args: list[str], cwd: Path) -> subprocess.Popen:
    """`args` started in a session (and process group) of its own, as a terminal's shell does."""
    return subprocess.Popen(args, cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _ended(driver: subprocess.Popen, uri: str, check: Any = None) -> Stopped:
    """How the driver ended (killed after 120 s), once `check(driver)` ran or failed."""
    try:
        out, err = driver.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        out, err = driver.communicate(timeout=60)
    failed = None
    try:
        if check is not None:
            check(driver)  # (communicate gives its output again)
    except AssertionError as error:
        failed = error
    _, parent, runs = mlflow_runs(uri, NAME)
    return Stopped(driver.returncode, out, err, failed, parent.info.status,
                   sorted((r.info.status, r.data.tags["tuner.status"]) for r in runs))


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, dataset: Path,
           mlflow_store_template: Path) -> Faults:
    if UV is None:
        pytest.skip("uv is not installed")
    folder = tmp_path_factory.mktemp("faults")
    uri = fresh_store(folder, mlflow_store_template)
    space = write_space(folder, NAME, dataset,
                        budget={"tokens": 8 * EVAL_STEPS * TOKENS_PER_STEP,
                                "eval_interval": EVAL_STEPS},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 2})
    storage = folder / "ray"
    driver = _driver([UV, "run", "--no-sync", "--project", str(REPO), "tuner", "search",
                      "--space", str(space), "--tracking-uri", uri, "--storage", str(storage)],
                     folder)
    _wait_until(uri, driver, lambda runs, tokens: len(tokens) == 2 and min(
        tokens.values()) >= EVAL_STEPS * TOKENS_PER_STEP, study=NAME)
    os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: to uv and tuner, then uv's own copy
    noticed: dict[str, Any] = {}

    def with_notice(driver: subprocess.Popen) -> None:
        noticed["stopped_at"] = stopped_with_notice(
            driver, uri, storage / NAME,
            f"uv run tuner search --resume --name {NAME} --storage {storage}", EVAL_STEPS,
            TOKENS_PER_STEP)

    ctrl_c = _ended(driver, uri, with_notice)
    node_lost = {server: _resumed_then_killed(server, folder, storage, uri)
                 for server in ("raylet", "gcs_server")}
    twice = _resumed_then_stopped_twice(folder, storage, uri)
    _, finished = resume_to_the_end(NAME, storage, folder, uri, completed=2)
    return Faults(storage, uri, ctrl_c, node_lost, twice, finished)


def _resumed(folder: Path, storage: Path, uri: str) -> subprocess.Popen:
    """The study resumed, once a trial has evaluated again."""
    _, _, runs = mlflow_runs(uri, NAME)
    before = {r.info.run_id: _evaluated(uri, r) for r in runs}
    driver = _driver([str(TUNER), "search", "--resume", "--name", NAME, "--storage",
                      str(storage)], folder)
    _wait_until(uri, driver, lambda runs, tokens: any(
        tokens.get(run_id, 0) > seen for run_id, seen in before.items()), study=NAME)
    return driver


def _resumed_then_killed(server: str, folder: Path, storage: Path, uri: str) -> Stopped:
    """The study resumed, then, once a trial evaluated again, its Ray's `server` SIGKILLed (the
    raylet or the GCS: this study's own, its driver's child)."""
    driver = _resumed(folder, storage, uri)
    found = [pid for pid, cmd in _descendants(driver.pid) if cmd.split()[0].endswith(f"/{server}")]
    assert len(found) == 1, _descendants(driver.pid)
    os.kill(found[0], signal.SIGKILL)
    return _ended(driver, uri)


def _resumed_then_stopped_twice(folder: Path, storage: Path, uri: str) -> Stopped:
    """The study resumed, then, once a trial evaluated again, stopped; once Tune has taken the
    stop (the flag that asks the trials to checkpoint is gone), stopped again, which ends the
    driver at once. (A stop each second after that fell in Ray's and Python's clean-up.)"""
    from tuner.search.faults.stopping import STOP_FLAG

    driver = _resumed(folder, storage, uri)
    driver.send_signal(signal.SIGINT)
    time.sleep(1)  # its handler has run: the flag stands while the trials checkpoint
    deadline = time.monotonic() + 60
    while (storage / NAME / STOP_FLAG).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    driver.send_signal(signal.SIGINT)
    return _ended(driver, uri)


def _evaluated(uri: str, run: Any) -> int:
    """The tokens at the run's last logged val_loss."""
    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "val_loss")
    return max((m.step for m in history), default=0)


@pytest.mark.slow
def test_one_ctrl_c_under_uv_run_is_one_stop_with_its_grace(faults: Faults) -> None:
    """uv passes on a SIGINT sent to its process group 0.2 s later; the driver ran the copy's
    handler a second after the first's (Ray checks for signals each second) and took it for a
    second stop: "stopped at once", no checkpoint of the step each trial was at, runs left
    RUNNING. One stop: each trial checkpoints its step, the runs end, exit 130."""
    stopped = faults.ctrl_c
    if stopped.failed:
        raise stopped.failed
    assert stopped.returncode == 130, stopped.out + stopped.err
    assert (stopped.parent, stopped.trials) == ("KILLED", [("KILLED", "interrupted")] * 2)
    assert "a second stop" not in stopped.out + stopped.err
    assert "Traceback" not in stopped.err


@pytest.mark.slow
@pytest.mark.parametrize(("server", "named"), [("raylet", "raylet (the node's scheduler)"),
                                               ("gcs_server", "GCS (its head's server)")])
def test_a_lost_ray_node_stops_the_study_in_words(faults: Faults, server: str,
                                                  named: str) -> None:
    """The raylet SIGKILLed: Ray ended the driver 13 s later with exit 1, no word of its own but
    Ray's dump of the raylet's log, and the runs RUNNING; the GCS: 60 s later, alike. One line
    says what was lost and one how to continue; the runs end as on a stop; exit 1."""
    lost = faults.node_lost[server]
    assert lost.returncode == 1, lost.out + lost.err
    said = [line for line in lost.out.splitlines() if line.startswith("error:")]
    assert said == [(f"error: the local Ray's {named} died (killed by SIGKILL, as the "
                     "out-of-memory killer does); the study stopped, its runs ended")], lost.out
    assert (f"continue it with: tuner search --resume --name {NAME} --storage {faults.storage}"
            in lost.out)
    assert "Raylet is terminated" not in lost.out + lost.err  # Ray's own, with its log
    assert (lost.parent, lost.trials) == ("KILLED", [("KILLED", "interrupted")] * 2)
    assert "Traceback" not in lost.err


@pytest.mark.slow
def test_a_second_stop_still_ends_the_runs_as_killed(faults: Faults) -> None:
    """A stop after Tune had taken one ended the driver at once and left the running trials'
    runs RUNNING until a resume: they end interrupted, KILLED, as on one stop; exit 130."""
    twice = faults.twice
    assert twice.returncode == 130, twice.out + twice.err
    assert "stopped at once (a second stop); its runs ended as interrupted (KILLED)" in twice.out
    assert (f"continue it with: tuner search --resume --name {NAME} --storage {faults.storage}"
            in twice.out)
    assert twice.parent == "KILLED" and twice.trials == [("KILLED", "interrupted")] * 2
    assert "Traceback" not in twice.err


@pytest.mark.slow
def test_the_study_resumed_after_each_fault_ends_as_one_never_stopped(faults: Faults) -> None:
    """Resumed after each, each trial's losses are those of the same trial trained from start
    to end in one go (tuner.replay, exact on the CPU)."""
    import tuner

    assert {r.info.status for r in faults.finished} == {"FINISHED"}
    for run in faults.finished:
        replayed = tuner.replay(run.info.run_id, tracking_uri=faults.uri,
                                announce=lambda plan: None)
        assert replayed.points and replayed.max_abs_diff == 0.0, replayed.points
