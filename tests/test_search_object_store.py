"""A study whose state and checkpoints live in an object store (`--storage s3://...`, moto's S3
server on 127.0.0.1): the checks before Ray starts; a stop with notice and a driver killed, each
resumed from the bucket alone; MLflow's artifacts in the same bucket, the registered winner
loaded from there by a process that never saw the study's folders, which also extends the study
(the Python API), confirms and exports its winner and writes its report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from services import mlflow_server
from studies import (
    ENV,
    TUNER,
    _wait_until,
    fresh_store,
    mlflow_runs,
    run_tuner,
    sigkill_driver,
    start_search,
    write_space,
)

NAME = "bucketed"


def test_a_store_that_cannot_be_used_exits_2_naming_why(tmp_path: Path, dataset: Path,
                                                        s3) -> None:
    """Wrong credentials, a missing bucket, an endpoint that does not answer, keys in the URI:
    exit 2 naming which, before Ray starts; nothing written, here or in the bucket; no key in
    any output."""
    space = write_space(tmp_path, NAME, dataset)
    env = {**ENV, **s3.env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for change, storage, expected in [
            ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, s3.uri(),
             f"the credentials were refused for bucket '{s3.bucket}'"),
            ({}, "s3://no-such-bucket/studies", "bucket 'no-such-bucket' does not exist"),
            ({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}, s3.uri(),
             "(endpoint http://127.0.0.1:1): the endpoint does not answer"),
            ({}, f"s3://{s3.bucket}/x?secret_key=in-the-uri", "the URI holds credentials")]:
        proc = run_tuner(["search", "--space", str(space), "--tracking-uri",
                          f"sqlite:///{tmp_path}/mlflow.db", "--storage", storage],
                         cwd=tmp_path, env={**env, **change}, timeout=120)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out
        assert expected in " ".join(out.split()), out
        assert "Traceback" not in out
        for secret in (s3.key_id, s3.secret, "not-the-secret", "in-the-uri"):
            assert secret not in out
    assert s3.keys() == []
    assert os.listdir(tmp_path) == [space.name]  # no tracking store, working copy or Ray
    proc = run_tuner(["search", "--resume", "--name", "nowhere", "--storage", s3.uri()],
                     cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"no study 'nowhere' to resume in {s3.uri()} (studies there: none)" in " ".join(
        proc.stderr.split())


@pytest.mark.slow
def test_a_study_in_a_bucket_stops_resumes_and_outlives_its_driver(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path, s3) -> None:
    """A study on `--storage s3://...` recording to an MLflow server whose artifacts are in the
    same bucket: stopped with notice (the flag reaches the trials over Ray, not a file), resumed,
    SIGKILLed, its local folders deleted and resumed from the bucket alone (the dataset staged
    there, fetched by each node into its cache), it finishes with
    every evaluation logged once; each trial resumed from a checkpoint in the bucket replays
    exactly from scratch (it equals an uninterrupted run); a second driver is refused while the
    first runs. From a fresh folder (another machine's: no working copy or cache), the Python
    API extends it from the bucket, `tuner best` confirms, registers and exports its winner, and
    `tuner report` writes it; the winner loads by name there."""
    # MLflow's clients fetch artifacts through the server: moto refuses the presigned URLs they
    # would otherwise fetch from the store directly while it checks keys (S3 takes them)
    env = {**ENV, **s3.env(), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}
    space = write_space(tmp_path, NAME, dataset,
                        hparams={"lr_max": {"loguniform": [1e-3, 1e-2]}},
                        budget={"tokens": 81920, "eval_interval": 20},
                        search={"algorithm": "tpe", "scheduler": "none", "num_samples": 3,
                                "checkpoint_interval_s": 0, "stop_grace_s": 60})
    backend = fresh_store(tmp_path / "server", mlflow_store_template)
    with mlflow_server(backend, tmp_path / "server" / "artifacts",
                       destination=f"s3://{s3.bucket}/mlflow") as uri:
        driver = start_search(space, uri, s3.uri(), tmp_path, env=env)
        _wait_until(uri, driver, lambda runs, tokens: max(tokens.values(), default=0) >= 20480,
                    study=NAME)
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=120)
        assert driver.returncode == 130, out + err
        assert "stopping: the running trials checkpoint their current step" in err, err
        assert f"--resume --name {NAME} --storage {s3.uri()}" in out
        assert "uploading the dataset" in out  # once: the nodes fetch it from the bucket
        stopped = _stop_checkpoints(s3)
        assert stopped  # each running trial checkpointed its step, in the bucket

        driver = subprocess.Popen([str(TUNER), "search", "--resume", "--name", NAME,
                                   "--storage", s3.uri()], cwd=tmp_path, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_until(uri, driver, lambda runs, tokens: any(
                r.info.status == "FINISHED" for r in runs) and len(runs) == 3, study=NAME)
            second = run_tuner(["search", "--resume", "--name", NAME, "--storage", s3.uri()],
                               cwd=tmp_path, env={**env, "XDG_CACHE_HOME": str(tmp_path / "b")},
                               timeout=120)  # another machine's: a working copy of its own
            assert second.returncode == 2 and "is running: another `tuner search`" in \
                second.stderr, second.stdout + second.stderr
        finally:
            sigkill_driver(driver)
        _, _, before = mlflow_runs(uri, NAME)
        finished = {r.info.run_id: r.info.end_time for r in before if r.info.status == "FINISHED"}
        assert 0 < len(finished) < 3
        shutil.rmtree(tmp_path / "cache")  # the driver's working copy: the bucket alone is left

        proc = run_tuner(["search", "--resume", "--name", NAME, "--storage", s3.uri()],
                         cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        client, parent, runs = mlflow_runs(uri, NAME)
        assert parent.info.status == "FINISHED" and parent.data.tags["tuner.storage"] == s3.uri()
        assert [r.data.tags["tuner.status"] for r in runs] == ["completed"] * 3
        # the cache deleted with the working copy, the resumed trials fetched the dataset again
        assert list((tmp_path / "cache" / "tuner" / "datasets").glob("*/train.npy"))
        assert [key for key in s3.keys(prefix="") if "/datasets/" in f"/{key}" and
                key.endswith("manifest.json")]
        for run in runs:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
            assert steps == [10240 * k for k in range(1, 9)], steps  # no gap, no repeat
            if run.info.run_id in finished:
                assert run.info.end_time == finished[run.info.run_id]  # not run again
        resumed = min((r for r in runs if r.info.run_id not in finished),  # after the kill
                      key=lambda r: r.data.tags["tuner.trial_id"] not in stopped)
        proc = run_tuner(["replay", resumed.info.run_id, "--tracking-uri", uri], cwd=tmp_path,
                         env=env)  # from scratch, as if never stopped: the same losses
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "within the tolerance 0" in proc.stdout, proc.stdout

        fresh = tmp_path / "fresh"  # another machine's: no working copy, no cache
        fresh.mkdir()
        fresh_env = {**env, "XDG_CACHE_HOME": str(fresh / "cache"), "HOME": str(fresh)}
        extend = ("import tuner; r = tuner.search(name=%r, resume=True, num_samples=4, "
                  "storage=%r, tracking_uri=%r, quiet=True); print(r.status, len(r.trials))")
        proc = subprocess.run([sys.executable, "-c", extend % (NAME, s3.uri(), uri)], cwd=fresh,
                              text=True, capture_output=True, timeout=600, check=False,
                              env=fresh_env)  # extended from the bucket, through the Python API
        assert proc.returncode == 0 and proc.stdout.split()[-2:] == ["finished", "4"], \
            proc.stdout + proc.stderr
        _, _, runs = mlflow_runs(uri, NAME)
        assert all(r.info.end_time == finished[r.info.run_id] for r in runs
                   if r.info.run_id in finished)  # the 3 trials untouched

        proc = run_tuner(["best", "--study", NAME, "--confirm", "1", "--seeds", "1",
                          "--register", "bucketlm", "--export", str(fresh / "best.yaml"),
                          "--tracking-uri", uri], cwd=fresh, env=fresh_env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "seed check" in proc.stdout and (fresh / "best.yaml").is_file(), proc.stdout
        assert any(key.endswith("checkpoint.pt") for key in s3.keys("mlflow/"))
        proc = run_tuner(["report", "--study", NAME, "--out", str(fresh / "report"),
                          "--tracking-uri", uri], cwd=fresh, env=fresh_env)
        assert proc.returncode == 0 and (fresh / "report" / "study.html").is_file(), \
            proc.stdout + proc.stderr
        assert any("/report/" in key for key in s3.keys("mlflow/"))  # the parent run's copy
        load = ("import mlflow; model = mlflow.pyfunc.load_model('models:/bucketlm/latest'); "
                "print(repr(model.predict(['Once upon a time'])[0]))")
        proc = subprocess.run([sys.executable, "-c", load], cwd=fresh, text=True,
                              capture_output=True, timeout=300, check=False,
                              env={**fresh_env, "MLFLOW_TRACKING_URI": uri})
        assert proc.returncode == 0 and proc.stdout.startswith("'"), proc.stdout + proc.stderr
    for secret in (s3.key_id, s3.secret):
        assert not any(secret in tag for run in runs for tag in run.data.tags.values())
        assert not any(secret in value for run in runs for value in run.data.params.values())


def _stop_checkpoints(s3) -> dict[str, int]:
    """The step of each trial's stop checkpoint in Tune's newest state in the bucket, each of
    whose checkpoints is there too."""
    from tuner.search.faults.stopping import STOP_CHECKPOINT

    prefix = f"studies/{NAME}/"
    keys = s3.keys(prefix)
    newest = max(key for key in keys if key.startswith(f"{prefix}experiment_state-"))
    saved = json.loads(s3.client().get_object(Bucket=s3.bucket, Key=newest)["Body"].read())
    stopped = {}
    for trial, runtime in saved["trial_data"]:
        trial, last = json.loads(trial), json.loads(runtime)["last_result"]
        if STOP_CHECKPOINT in last:
            stopped[trial["trial_id"]] = last[STOP_CHECKPOINT]
            folder = f"{prefix}trial_{trial['trial_id']}/{last['checkpoint_dir_name']}/"
            assert f"{folder}checkpoint.pt" in keys, (folder, keys)
    return stopped
