"""A study whose --storage fills up: stopped as a fault of the machine, not of a trial, and resumed
once there is room (a real tmpfs, mounted where this machine allows it)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from studies import fresh_store, mlflow_runs, run_tuner, write_space


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (grown later with `remount`); skipped where mounting is not allowed."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or 'mount failed'}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("max_failures", [2, 0])
def test_a_full_disk_stops_the_study_and_resume_finishes_it(tmp_path: Path, small_disk: Path,
                                                             dataset: Path,
                                                             mlflow_store_template: Path,
                                                             max_failures: int) -> None:
    """Checkpoints fill the disk under --storage: exit 1 naming it and the exact --resume, no run
    FAILED or RUNNING (a failed write used to fail its trial as a bad config, exit 2; with no
    retries left, as a failed try); on a bigger disk --resume trains every trial to its end and
    names the best of them."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "full", dataset, hparams={"lr_max": {"loguniform": [1e-3, 1e-2]}},
                        budget={"tokens": 61440, "eval_interval": 10},
                        search={"algorithm": "tpe", "scheduler": "none", "num_samples": 4,
                                "max_failures": max_failures})
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri,
                      "--storage", str(small_disk)], cwd=tmp_path, timeout=300)
    output = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1, output
    assert f"error: {small_disk}/" in output and "No space left on device" in output, output
    assert "Traceback" not in output, output
    assert (f"once there is room again, continue it with: tuner search --resume --name full "
            f"--storage {small_disk}") in output
    _, parent, children = mlflow_runs(uri, "full")
    assert parent.info.status == "KILLED"
    assert children and all(run.info.status in ("FINISHED", "KILLED") for run in children)
    assert not [run for run in children if run.data.tags["tuner.status"] == "failed"]

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    proc = run_tuner(["search", "--resume", "--name", "full", "--storage", str(small_disk)],
                     cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, parent, children = mlflow_runs(uri, "full")
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert {run.data.tags["tuner.status"] for run in children} == {"completed"}
    best = min(children, key=lambda run: run.data.metrics["best_val_loss"])
    assert f"best trial {best.data.tags['tuner.trial_id']}:" in proc.stdout
