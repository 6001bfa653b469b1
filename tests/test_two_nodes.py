"""A study across two Ray nodes on this machine with no path shared between driver and trials: a
head with no CPU for trials, a node that joined it (`ray start --address`) with a temporary folder
and a dataset cache of its own, and the study in an S3 bucket (moto on 127.0.0.1). Real Ray,
MLflow and CPU trials."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
from services import ServiceUnavailable, ray_head
from studies import (
    ENV,
    _wait_until,
    fresh_store,
    mlflow_runs,
    resume_to_the_end,
    start_search,
    stopped_with_notice,
    tune_trials,
    write_space,
)

from tuner.search.trial.trainable import SINCE_RESTORE

EVAL_STEPS, TOKENS_PER_STEP = 300, 16 * 32  # B 16, context 32


def _from_bucket(storage: str, name: str, into: Path) -> Path:
    """A local copy of study `name`'s folder in the bucket (Tune's saves and the checkpoints)."""
    from pyarrow import fs

    from tuner.store.object_store import locate

    where = locate(storage)
    shutil.rmtree(into / name, ignore_errors=True)
    fs.copy_files(where.study_path(name), str(into / name), source_filesystem=where.filesystem)
    return into / name


def _trial_folders(temp: Path) -> list[Path]:
    """The trials' working folders (tuner.search.trial.scratch) in the temporary folder `temp`."""
    return list(temp.glob("tuner-trials-*"))


@pytest.mark.slow
def test_a_study_runs_on_the_worker_node_stops_with_notice_and_resumes_there(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path, s3,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every trial trains on the worker node (its run's `tuner.node`) on the dataset it fetched
    from the bucket, its working files in that node's temporary folder, its checkpoints in the
    bucket; a SIGUSR1 to the driver checkpoints each running trial at its step (the flag reaches
    it over Ray), `--resume --address` goes on from those steps to the end, and no node keeps the
    trials' working files."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "nodes", dataset,
                        budget={"tokens": 3 * EVAL_STEPS * TOKENS_PER_STEP,
                                "eval_interval": EVAL_STEPS},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 2})
    storage, driver_temp, copies = s3.uri(), tmp_path / "driver-tmp", tmp_path / "from-bucket"
    driver_temp.mkdir()
    node_cache = tmp_path / "worker-cache"  # the nodes' environment, not the driver's
    monkeypatch.setenv("TUNER_DATASET_CACHE", str(node_cache))
    try:
        with ray_head(num_cpus=0, worker_cpus=2) as head:
            worker = head.worker
            env = {**ENV, **s3.env(), **head.env, "TMPDIR": str(driver_temp),
                   "TUNER_DATASET_CACHE": str(tmp_path / "driver-cache"),
                   "XDG_CACHE_HOME": str(tmp_path / "driver-home")}
            driver = start_search(space, uri, storage, tmp_path, "--address", head.address,
                                  env=env)
            try:
                _wait_until(uri, driver, lambda runs, tokens: len(tokens) == 2 and min(
                    tokens.values()) >= EVAL_STEPS * TOKENS_PER_STEP, study="nodes")
                assert len(_trial_folders(worker.temp_dir)) == 1
                driver.send_signal(signal.SIGUSR1)
                stopped_at = stopped_with_notice(
                    driver, uri, lambda: _from_bucket(storage, "nodes", copies),
                    f"tuner search --resume --name nodes --storage {storage} --address "
                    f"{head.address}", EVAL_STEPS, TOKENS_PER_STEP)
            finally:
                if driver.poll() is None:
                    driver.kill()
                    driver.wait()
            assert not _trial_folders(worker.temp_dir)  # what the stopped trials left: removed

            resume_to_the_end("nodes", storage, tmp_path, uri, 2, "--address", head.address,
                              env=env)
            assert not _trial_folders(worker.temp_dir)
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    assert not _trial_folders(driver_temp)
    assert list(node_cache.glob("*/train.npy")) and not (tmp_path / "driver-cache").exists()
    for trial_id, last in tune_trials(_from_bucket(storage, "nodes", copies)).items():
        assert last["tokens"] - last[SINCE_RESTORE] == stopped_at[trial_id] * TOKENS_PER_STEP
    client, _, runs = mlflow_runs(uri, "nodes")
    nodes = {node.split()[1] for r in runs for node in r.data.tags["tuner.node"].split(", ")}
    assert nodes == {worker.node_id}
    for run in runs:  # each checkpoint the worker wrote reached the study's store
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == [
            "checkpoint/checkpoint.pt"]
