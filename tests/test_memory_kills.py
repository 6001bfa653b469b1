"""Trials whose workers Ray's memory monitor kills: retried, then recorded as failed with the
reason, in a study that ends as studies end (a real local Ray, its monitor's threshold lowered)."""

from __future__ import annotations

from pathlib import Path

import pytest
from studies import ENV, fresh_store, mlflow_runs, run_tuner, write_space


def _used_memory_fraction_plus(extra_bytes: int) -> float:
    """The node's used memory, as Ray's monitor counts it (total less available), plus
    `extra_bytes`, as a fraction of its total."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total, available = (int(meminfo[key].split()[0]) * 1024 for key in ("MemTotal", "MemAvailable"))
    return (total - available + extra_bytes) / total


@pytest.mark.slow
@pytest.mark.parametrize("killed", ["mid-step", "as it starts"])
def test_memory_monitor_kills_are_retried_then_recorded(killed: str, tmp_path: Path,
                                                        dataset: Path,
                                                        mlflow_store_template: Path) -> None:
    """Killed mid-step (a B=256 step of a 256-wide model takes about 4 GB; the threshold leaves
    1.5 GB to Ray and the trial) or as its worker starts (a threshold of 1%): each try of the
    trial fails, then its run is FAILED with the monitor named, the study's run FINISHED, and the
    command exits 1 (no trial to replay) without a traceback. Ray 2.60's Tune crashed the
    study on the first and recorded no run for the second."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "oom", dataset,
                        model={"context_length": 256, "d_model": 256, "num_layers": 2,
                               "num_heads": 4, "d_ff": 512},
                        hparams={"B": 256},  # 10 steps, the fewest a study may have
                        budget={"tokens": 655360, "eval_interval": 2, "eval_windows": 2},
                        search={"max_concurrent": 1, "num_samples": 1, "max_failures": 1})
    threshold = 0.01 if killed == "as it starts" else _used_memory_fraction_plus(3 * 2**29)
    env = {**ENV, "RAY_memory_usage_threshold": f"{threshold:.4f}",
           "RAY_memory_monitor_refresh_ms": "100"}
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri,
                      "--storage", str(tmp_path / "ray")], cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Caught unexpected exception" not in proc.stderr
    assert "finished: 1 failed" in proc.stdout
    client, parent, children = mlflow_runs(uri, "oom")
    assert parent.info.status == "FINISHED"
    [run] = children
    assert run.info.status == "FAILED" and run.data.tags["tuner.status"] == "failed"
    assert "killed by Ray's memory monitor" in run.data.tags["tuner.status_detail"]
    assert run.data.params["batch_size"] == "256"  # described as a trial that trained is
    if killed == "mid-step":  # a retry of a trial Tune had started: one line, no page of Ray's
        assert run.data.tags["tuner.retries"] == "1"
        assert "failed (try 1 of 2; retried from the start): its worker was killed by Ray's " \
               "memory monitor" in proc.stderr


def test_without_the_ray_method_it_patches_a_study_warns_and_goes_on() -> None:
    """worker_deaths patches a private method of Ray's actor manager: a Ray without it (an
    upgrade) gets a warning, not a crash at start; a Ray with it gets the patch once."""
    from ray.exceptions import OutOfMemoryError, RayActorError

    from tuner.search.faults.worker_deaths import as_actor_deaths

    said: list[str] = []
    as_actor_deaths(said.append, type("Manager", (), {}))
    assert len(said) == 1 and "no RayActorManager._actor_task_failed" in said[0]

    seen: list[Exception] = []

    class Manager:
        def _actor_task_failed(self, tracked_actor_task: object, exception: Exception) -> None:
            seen.append(exception)

    as_actor_deaths(said.append, Manager)
    as_actor_deaths(said.append, Manager)
    Manager()._actor_task_failed("task", OutOfMemoryError("killed by the memory monitor"))
    assert len(said) == 1 and len(seen) == 1 and isinstance(seen[0], RayActorError)
