"""A stop with notice (Slurm's SIGUSR1, or SIGTERM): each running trial checkpoints the step it
is at before the study stops, and `--resume` goes on from that step, not from the trial's last
evaluation (a real local Ray and MLflow, CPU trials)."""

from __future__ import annotations

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
    resume_to_the_end,
    stopped_with_notice,
    tune_trials,
    write_space,
)

from tuner.search.trial.trainable import SINCE_RESTORE

EVAL_STEPS, TOKENS_PER_STEP = 300, 16 * 32  # B 16, context 32


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
        stopped_at = stopped_with_notice(
            driver, uri, storage / "noticed",
            f"tuner search --resume --name noticed --storage {storage}", EVAL_STEPS,
            TOKENS_PER_STEP)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()

    resume_to_the_end("noticed", storage, tmp_path, uri, completed=2)
    for trial_id, last in tune_trials(storage / "noticed").items():
        assert last["tokens"] - last[SINCE_RESTORE] == stopped_at[trial_id] * TOKENS_PER_STEP
