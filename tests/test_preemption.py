"""A stop with notice (Slurm's SIGUSR1, or SIGTERM): each running trial checkpoints the step it
is at before the study stops, and `--resume` goes on from that step, not from the trial's last
evaluation (a real local Ray and MLflow, CPU trials)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from studies import (
    ENV,
    TUNER,
    _wait_until,
    fresh_store,
    mlflow_runs,
    resume_to_the_end,
    write_space,
)

from model.checkpoint import read_checkpoint
from tuner.search.stopping import STOP_CHECKPOINT
from tuner.search.trainable import SINCE_RESTORE

EVAL_STEPS, TOKENS_PER_STEP = 300, 16 * 32  # B 16, context 32


def _tune_trials(study_dir: Path) -> dict[str, dict]:
    """Each trial's state in Tune's newest save of the study: its last result and checkpoint."""
    saved = json.loads(max(study_dir.glob("experiment_state-*.json")).read_text())
    trials = {}
    for trial, runtime in saved["trial_data"]:
        trial, runtime = json.loads(trial), json.loads(runtime)
        trials[trial["trial_id"]] = runtime["last_result"]
    return trials


@pytest.mark.slow
@pytest.mark.parametrize("notice", ["SIGUSR1 to the driver", "SIGTERM to the group"])
def test_a_stop_checkpoints_each_trial_where_it_is_and_resume_goes_on_from_there(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path,
        notice: str) -> None:
    """Signalled between two evaluations, 300 steps apart: the study exits 130 with the resume
    command, each running trial's newest checkpoint is past its last evaluation, and the
    resumed trial's first result counts its tokens from that checkpoint's step."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "noticed", dataset,
                        budget={"tokens": 4 * EVAL_STEPS * TOKENS_PER_STEP,
                                "eval_interval": EVAL_STEPS},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 2})
    storage = tmp_path / "ray"
    driver = subprocess.Popen([str(TUNER), "search", "--space", str(space), "--tracking-uri", uri,
                               "--storage", str(storage)], cwd=tmp_path, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)  # as a batch job's step starts
    try:
        _wait_until(uri, driver, lambda runs, tokens: len(tokens) == 2 and min(
            tokens.values()) >= EVAL_STEPS * TOKENS_PER_STEP, study="noticed")
        if notice.endswith("driver"):
            driver.send_signal(signal.SIGUSR1)
        else:
            os.killpg(driver.pid, signal.SIGTERM)
        out, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, out + err
    assert "stopping: the running trials checkpoint their current step" in err, err
    assert f"continue it with: tuner search --resume --name noticed --storage {storage}" in out
    client, parent, runs = mlflow_runs(uri, "noticed")
    assert parent.info.status == "KILLED"
    assert {r.data.tags["tuner.status"] for r in runs} == {"interrupted"}
    stopped_at = {}
    for trial_id, last in _tune_trials(storage / "noticed").items():
        run = next(r for r in runs if r.data.tags["tuner.trial_id"] == trial_id)
        evaluated = max(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        checkpoint = storage / "noticed" / f"trial_{trial_id}" / last["checkpoint_dir_name"]
        stopped_at[trial_id] = step = last[STOP_CHECKPOINT]
        assert int(read_checkpoint(checkpoint, mmap=True)["iteration"]) == step
        assert step * TOKENS_PER_STEP >= evaluated == last["tokens"]
    assert any(step % EVAL_STEPS for step in stopped_at.values()), stopped_at  # between evals
    assert not (storage / "noticed" / ".stop-requested").exists()

    resume_to_the_end("noticed", storage, tmp_path, uri, completed=2)
    for trial_id, last in _tune_trials(storage / "noticed").items():
        assert last["tokens"] - last[SINCE_RESTORE] == stopped_at[trial_id] * TOKENS_PER_STEP
