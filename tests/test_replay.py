"""`tuner replay`: a recorded trial trained again is bit-exact on CPU, from scratch and from its
mid-trial checkpoint; bad input (unknown run or study, another dataset, an altered checkpoint,
a store that is down) exits 2 and writes nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from inspect_study import TRIALS, artifact_path, log_study, tuner, write_malicious_checkpoint
from mlflow import MlflowClient
from services import ServiceUnavailable, free_port, mlflow_server

pytest_plugins = ["inspect_study"]  # the `recorded` study fixture


def _runs(uri: str) -> int:
    client = MlflowClient(tracking_uri=uri)
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))


def _replay_of(uri: str, original: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_run(original).info.experiment_id
    return client.search_runs([exp], filter_string=f"tags.`tuner.replay_of` = '{original}'",
                              order_by=["attributes.start_time DESC"])


def test_replay_from_scratch_is_bit_exact(recorded):
    run_id = recorded.best_run_id
    code, out = tuner("replay", run_id, "--device", "auto", "--tracking-uri", recorded.uri)
    assert code == 0, out
    assert "largest absolute difference: 0.0 " in out
    replay = _replay_of(recorded.uri, run_id)[0]
    assert replay.data.tags["tuner.role"] == "replay"
    assert replay.data.tags["mlflow.parentRunId"] == run_id
    assert replay.data.tags["tuner.replay.ok"] == "true"
    assert replay.data.tags["tuner.device"] == "cpu"  # what it ran on, as a trial's tag says
    client = MlflowClient(tracking_uri=recorded.uri)
    original = [(m.step, m.value) for m in client.get_metric_history(run_id, "val_loss")]
    history = client.get_metric_history(replay.info.run_id, "val_loss")
    replayed = [(m.step, m.value) for m in history]
    assert sorted(replayed) == sorted(original) and len(original) == 8
    assert replay.data.metrics["replay_max_abs_diff"] == 0.0


def test_replay_of_study_best_from_mid_trial_checkpoint_is_bit_exact(recorded):
    code, out = tuner("replay", "--study", recorded.name, "--from-checkpoint",
                      "--tracking-uri", recorded.uri)
    assert code == 0, out
    assert f"replaying run {recorded.best_run_id}" in out
    assert "mid-trial checkpoint (5,120 tokens)" in out
    assert "largest absolute difference: 0.0 " in out
    replay = _replay_of(recorded.uri, recorded.best_run_id)[0]
    steps = [m.step for m in MlflowClient(tracking_uri=recorded.uri).get_metric_history(
        replay.info.run_id, "val_loss")]
    assert sorted(steps) == [6400, 7680, 8960, 10240]  # only what it trained again


def test_replay_of_a_stopped_trial_goes_as_far_as_it_went(recorded):
    stopped = recorded.run_ids[1]  # ASHA stopped it after two evaluations
    code, out = tuner("replay", stopped, "--tracking-uri", recorded.uri)
    assert code == 0, out
    replay = _replay_of(recorded.uri, stopped)[0]
    steps = [m.step for m in MlflowClient(tracking_uri=recorded.uri).get_metric_history(
        replay.info.run_id, "val_loss")]
    assert sorted(steps) == [1280, 2560]


def test_difference_beyond_tolerance_exits_nonzero(tmp_path, byte_dataset, mlflow_store_template):
    # A record whose val_loss is 1e-3 off what the config gives: no replay can match it.
    study = log_study(tmp_path, "off", byte_dataset, mlflow_store_template,
                      trials=[TRIALS[1]], val_offset=1e-3)
    code, out = tuner("replay", study.run_ids[0], "--tracking-uri", study.uri)
    assert code == 1, out
    assert "exceeds the tolerance 0" in out
    code, out = tuner("replay", study.run_ids[0], "--tracking-uri", study.uri,
                      "--tolerance", "0.01")
    assert code == 0, out
    # A GPU trial replayed on the CPU cannot be exact: its default tolerance is the GPU's
    client = MlflowClient(tracking_uri=study.uri)
    client.set_tag(study.run_ids[0], "tuner.device", "cuda (NVIDIA H100 80GB HBM3)")
    client.set_tag(study.run_ids[0], "tuner.git_commit", "a" * 40 + "-dirty")
    code, out = tuner("replay", study.run_ids[0], "--tracking-uri", study.uri, columns=80)
    assert code == 0 and "tolerance 0.01" in out, out
    assert f"warning: the trial ran code version {'a' * 40}-dirty, this is " in out  # one line


def test_changed_dataset_is_refused_and_nothing_is_written(recorded, tmp_path):
    changed = tmp_path / "data"
    shutil.copytree(recorded.data, changed)
    valid = np.load(changed / "valid.npy")
    valid[0] = (valid[0] + 1) % 256
    np.save(changed / "valid.npy", valid)
    before = _runs(recorded.uri)
    code, out = tuner("replay", recorded.best_run_id, "--data", str(changed),
                      "--tracking-uri", recorded.uri)
    assert code == 2
    assert "is not the one run" in out and "sha256" in out
    code, out = tuner("replay", recorded.best_run_id, "--data", str(tmp_path / "nowhere"),
                      "--tracking-uri", recorded.uri)
    assert code == 2 and f"--data {tmp_path / 'nowhere'}: no such folder" in out
    (tmp_path / "notes").mkdir()
    code, out = tuner("replay", recorded.best_run_id, "--data", str(tmp_path / "notes"),
                      "--tracking-uri", recorded.uri)
    assert code == 2 and f"--data {tmp_path / 'notes'}: not a dataset folder (no meta.json)" in out
    assert _runs(recorded.uri) == before


def test_a_run_recorded_with_the_earlier_dataset_hash_still_replays(recorded, tmp_path):
    """Earlier versions hashed meta.json whole: their runs' tag still matches their folder."""
    from tuner.search.record.provenance import dataset_digests

    store = tmp_path / "mlflow.db"
    shutil.copy(recorded.uri.removeprefix("sqlite:///"), store)
    uri = f"sqlite:///{store}"
    content, legacy = dataset_digests(recorded.data)
    assert content != legacy
    MlflowClient(tracking_uri=uri).set_tag(recorded.best_run_id, "tuner.dataset_sha256", legacy)
    code, out = tuner("replay", recorded.best_run_id, "--tracking-uri", uri)
    assert code == 0 and "largest absolute difference: 0.0 " in out, out


def test_truncated_mid_checkpoint_is_refused(tmp_path, byte_dataset, mlflow_store_template):
    study = log_study(tmp_path, "cut", byte_dataset, mlflow_store_template,
                      trials=[TRIALS[0]])
    path = artifact_path(study.uri, study.run_ids[0], "checkpoint_mid/checkpoint.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = _runs(study.uri)
    code, out = tuner("replay", study.run_ids[0], "--from-checkpoint", "--tracking-uri", study.uri)
    assert code == 2
    assert "truncated or altered" in out
    assert _runs(study.uri) == before


def test_checkpoint_that_runs_code_on_load_is_refused(tmp_path, byte_dataset,
                                                      mlflow_store_template):

    from model.checkpoint import file_sha256

    study = log_study(tmp_path, "evil", byte_dataset, mlflow_store_template,
                      trials=[TRIALS[0]])
    run_id = study.run_ids[0]
    path = artifact_path(study.uri, run_id, "checkpoint_mid/checkpoint.pt")
    marker = tmp_path / "pwned"
    write_malicious_checkpoint(path, marker)
    # Even with a matching hash recorded, loading must not run the payload.
    MlflowClient(tracking_uri=study.uri).set_tag(run_id, "tuner.checkpoint_mid_sha256",
                                                 file_sha256(path))
    code, out = tuner("replay", run_id, "--from-checkpoint", "--tracking-uri", study.uri)
    assert code == 2
    assert "not a loadable checkpoint" in out
    assert not marker.exists()


@pytest.mark.parametrize("args, message", [
    (("0123456789abcdef0123456789abcdef",), "no run 0123456789abcdef0123456789abcdef"),
    (("not-a-run",), "no trial run with the id, trial id or run name 'not-a-run' in sqlite:///"),
    (("it's",), "\"it's\" is not a trial: give its MLflow run id (32 hex digits), its trial id or "
                "its run name"),
    (("--study", "nosuch"), "no study 'nosuch'"),
    ((), "name a trial (its run id, trial id or run name), or --study NAME"),
])
def test_unknown_run_or_study_exits_2(recorded, args, message):
    before = _runs(recorded.uri)
    code, out = tuner("replay", *args, "--tracking-uri", recorded.uri)
    assert code == 2
    assert message in " ".join(out.split())
    assert _runs(recorded.uri) == before


def test_a_trial_is_named_by_its_run_id_trial_id_or_run_name(recorded):
    """What the console, `tuner best` and MLflow's runs table show each name the trial; a name
    that fits two trial runs is refused, naming both."""
    from mlflow import MlflowClient

    from tuner.errors import UserError
    from tuner.store import runs

    client = MlflowClient(tracking_uri=recorded.uri)
    run = client.get_run(recorded.run_ids[1])
    trial_id = run.data.tags["tuner.trial_id"]
    assert trial_id in run.info.run_name
    for name in (run.info.run_id, trial_id, run.info.run_name):
        assert runs.trial_run(client, name).info.run_id == run.info.run_id
    other = client.get_run(recorded.run_ids[2])
    client.update_run(other.info.run_id, name=trial_id)
    try:
        both = ", ".join(sorted((run.info.run_id, other.info.run_id)))
        with pytest.raises(UserError, match=rf"'{trial_id}' names several trial runs in \S+ "
                                            rf"\(run ids {both}\): give the run id"):
            runs.trial_run(client, trial_id)
    finally:
        client.update_run(other.info.run_id, name=other.info.run_name)


def test_parent_run_is_not_a_trial(recorded):
    code, out = tuner("replay", recorded.parent_id, "--tracking-uri", recorded.uri)
    assert code == 2
    assert "is not a trial" in out


def test_tracking_server_down_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = tuner("replay", "--study", "any", "--tracking-uri",
                      f"http://127.0.0.1:{free_port()}")
    assert code == 2
    assert "not reachable" in out
    assert list(Path(tmp_path).iterdir()) == []


def test_a_malformed_tracking_uri_exits_2_quoting_none_of_its_password(tmp_path, monkeypatch):
    """A '#' in a password makes urllib read a port of its first letters: that is not shown."""
    monkeypatch.chdir(tmp_path)
    code, out = tuner("replay", "--study", "any", "--tracking-uri", "http://user:pa#ss@127.0.0.1:1")
    assert code == 2 and "not a valid URL" in out, out
    assert "pa#ss" not in out and "'pa'" not in out and "Traceback" not in out
    assert list(Path(tmp_path).iterdir()) == []


@pytest.mark.slow
def test_replay_against_a_server_prints_no_credentials(recorded, tmp_path):
    """MLflow prints "View run … at: URI" for each run it ends on a server: not with a password."""
    store = tmp_path / "mlflow.db"
    shutil.copy(recorded.uri.removeprefix("sqlite:///"), store)
    try:
        with mlflow_server(f"sqlite:///{store}", tmp_path / "artifacts") as uri:
            secret_uri = uri.replace("http://", "http://alice:S3cretPW@")
            code, out = tuner("replay", "--study", recorded.name, "--tracking-uri", secret_uri)
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    assert code == 0, out
    assert "S3cretPW" not in out and "View run" not in out


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["ctrl-c", "sigterm", "sighup"])
def test_a_replay_stopped_by_ctrl_c_ends_its_run_as_killed(tmp_path, byte_dataset,
                                                          mlflow_store_template, stop):
    """Ctrl-C during a replay exits 130 and ends its run KILLED (stopped), not FAILED; so do
    SIGTERM and SIGHUP (a closed terminal: its run stayed RUNNING). The trial's recorded config
    is made to train a million steps with no evaluation, so the stop comes mid-training."""
    record = log_study(tmp_path, "long", byte_dataset, mlflow_store_template, trials=TRIALS[:1])
    run_id = record.run_ids[0]
    config_file = artifact_path(record.uri, run_id, "trial_config.json")
    config = json.loads(config_file.read_text())
    config.update(total_iters=10**6, eval_interval=10**6, eval_tokens=None)
    config_file.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("tuner")), "replay", run_id,
                             "--tracking-uri", record.uri], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _replay_of(record.uri, run_id):  # its run is made just before it trains
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(2)
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out + err
    [replay] = _replay_of(record.uri, run_id)
    assert replay.info.status == "KILLED"


@pytest.mark.slow
def test_replay_of_a_real_search_is_bit_exact(tmp_path, byte_dataset, mlflow_store_template):
    from studies import fresh_store, run_tuner, write_space

    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "e2e", byte_dataset,
                        hparams={"lr_max": {"loguniform": [3e-3, 3e-2]}},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 2})
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri,
                      "--storage", str(tmp_path / "ray")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for how in ((), ("--from-checkpoint",)):
        code, out = tuner("replay", "--study", "e2e", "--tracking-uri", uri, *how)
        assert code == 0, out
        assert "largest absolute difference: 0.0 " in out


@pytest.mark.parametrize(("original", "replayed", "matches"), [
    (3.2, 3.2, True), (3.2, 3.21, True), (3.2, 3.3, False),
    (float("inf"), float("inf"), True),  # both diverged at this point
    (float("inf"), 3.2, False), (3.2, float("inf"), False),  # one diverged: never within tolerance
    (3.2, float("nan"), False),  # the replay has no evaluation here
])
def test_a_point_is_within_tolerance_only_if_both_runs_agree(original, replayed, matches):
    from tuner.inspect.replay import Point

    assert Point(100, original, replayed).within(0.01) is matches
