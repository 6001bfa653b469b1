"""Bad input (space, data, storage, --address, resources) fails before Ray starts, or any trial."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from services import ServiceUnavailable, free_port, ray_head
from studies import (
    ENV,
    fresh_store,
    run_tuner,
    start_search,
    write_space,
)


@pytest.mark.slow
def test_trial_larger_than_every_cluster_node_is_a_warning(tmp_path: Path, dataset: Path,
                                                           mlflow_store_template: Path) -> None:
    """A cluster may grow (an autoscaler adds nodes), so the study waits, saying why; SIGTERM
    then stops it as a study that can be resumed. Joined without its token first: refused at
    once, naming what to set (ray.init retried for 20 s, then named neither)."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "waits", dataset, resources={"cpus_per_trial": 4})
    log = tmp_path / "stdout.txt"
    try:
        with ray_head(num_cpus=2) as head, open(log, "w") as out:
            no_auth = {k: v for k, v in ENV.items() if not k.startswith("RAY_AUTH")}
            refused = run_tuner(["search", "--space", str(space), "--tracking-uri", uri,
                                 "--storage", str(tmp_path / "ray"), "--address", head.address],
                                cwd=tmp_path, env=no_auth, timeout=120)
            assert refused.returncode == 2 and refused.stderr.startswith(
                f"error: --address {head.address}: the cluster uses token authentication"), \
                refused.stdout + refused.stderr
            assert not (tmp_path / "ray").exists()
            driver = start_search(space, uri, tmp_path / "ray", tmp_path, "--address",
                                  head.address, env={**ENV, **head.env}, stdout=out,
                                  stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 180
            while "trials wait" not in log.read_text() and driver.poll() is None:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
            driver.send_signal(signal.SIGTERM)
            driver.wait(timeout=120)
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    said = " ".join(log.read_text().split())
    assert driver.returncode == 130, said
    assert (f"warning: resources.cpus_per_trial: a trial needs 4 CPUs and 0 GPUs, but no node of "
            f"the cluster at {head.address} has both (at most 2 CPUs and 0 GPUs on a node); "
            "trials wait until such a node joins") in said, said
    assert (f"continue it with: tuner search --resume --name waits --storage {tmp_path / 'ray'} "
            f"--address {head.address}") in said  # a resume that forgot it would start a local Ray


def test_bad_space_fails_before_ray(tmp_path: Path, dataset: Path) -> None:
    space = write_space(tmp_path, "bad", dataset, hparams={"lr_max": {"loguniform": [0.1, 0.01]}})
    proc = run_tuner(["search", "--space", str(space), "--storage", str(tmp_path / "ray")],
                     cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "lr_max" in proc.stderr or "α_max" in proc.stderr
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()


def test_model_too_small_for_the_dataset_fails_before_ray(tmp_path: Path, dataset: Path) -> None:
    """Every trial would fail on the 300-token dataset: one line now, not one failed run each."""
    space = write_space(tmp_path, "small", dataset, model={"vocab_size": {"choice": [256, 280]}})
    proc = run_tuner(["search", "--space", str(space), "--storage", str(tmp_path / "ray")],
                     cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert re.search(r"small\.yaml:\d+: model\.vocab_size: 280 is smaller than the dataset's "
                     r"vocabulary \(300 in", message), message
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()


def test_unusable_storage_fails_before_ray(tmp_path: Path, dataset: Path) -> None:
    """A --storage under a file: one line naming it, before a store or Ray is started."""
    space = write_space(tmp_path, "nowhere", dataset)
    proc = run_tuner(["search", "--space", str(space), "--storage", str(space / "ray")],
                     cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--storage {space / 'ray'}: {space} is not a folder" in " ".join(proc.stderr.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nowhere.yaml"]
    # a folder whose permissions let the user (root, say) write but which takes no new file
    proc = run_tuner(["search", "--space", str(space), "--storage", "/proc/tuner"],
                     cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--storage /proc/tuner: /proc is not a folder this user can write to" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nowhere.yaml"]


def test_missing_dataset_fails_before_ray(tmp_path: Path) -> None:
    space = write_space(tmp_path, "nodata", tmp_path / "missing")
    proc = run_tuner(["search", "--space", str(space), "--storage", str(tmp_path / "ray")],
                     cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "missing" in proc.stderr
    assert not (tmp_path / "ray").exists()


def test_bad_corpus_or_warm_start_writes_no_store_and_no_corpus(tmp_path: Path,
                                                                 dataset: Path) -> None:
    """Inputs found bad after the space (a corpus that cannot be prepared, an earlier study that
    is not there) leave the working folder as it was: no new sqlite store, no dataset cache."""
    one_line = tmp_path / "one.txt"
    one_line.write_text("no story boundary here")
    space = write_space(tmp_path, "nothing", dataset,
                        hparams={"lr_max": {"loguniform": [1e-4, 1e-2]}})
    text = space.read_text()
    cases = [(text.replace(f"path: {dataset}", f"source: files\n  input: {one_line}"),
              "no story boundary"),
             (text.replace(f"path: {dataset}", "source: synthetic\n  synthetic_bytes: 20000")
              .replace("search:\n", "search:\n  warm_start: earlier\n"), "no such file")]
    for study, message in cases:
        space.write_text(study)
        proc = run_tuner(["search", "--space", str(space)], cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, proc.stdout + proc.stderr
        assert sorted(os.listdir(tmp_path)) == ["nothing.yaml", "one.txt"]


def test_an_address_where_a_web_server_answers_fails_before_anything(tmp_path: Path,
                                                                     dataset: Path) -> None:
    """The dashboard's port, or another service's: ray.init would wait there for minutes."""
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    space = write_space(tmp_path, "web", dataset)
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        proc = run_tuner(["search", "--space", str(space), "--address", address, "--storage",
                          str(tmp_path / "ray")], cwd=tmp_path, timeout=120)
    finally:
        server.shutdown()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--address {address}: the server there is not a Ray cluster" in proc.stderr
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("address", "message"), [
    ("127.0.0.1:{port}", "no Ray cluster answers there"),
    ("headnode", "expected HOST:PORT (of `ray start --head`) or auto"),
    ("ray://127.0.0.1:10001", "Ray Client is not supported")])
def test_bad_ray_address_fails_before_anything(tmp_path: Path, dataset: Path, address: str,
                                               message: str) -> None:
    """Nothing listens at the address, or it is no address Ray takes: one line naming it, instead
    of ray.init's minutes of retries or its traceback."""
    space = write_space(tmp_path, "nowhere", dataset)
    address = address.format(port=free_port())
    proc = run_tuner(["search", "--space", str(space), "--address", address, "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--address {address}: {message}" in " ".join(proc.stderr.split())
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()


def test_trial_larger_than_the_local_ray_fails_before_any_trial(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """Tune would wait for ever for a node that fits: the local Ray's size is checked instead,
    before the tracking store is made (it was left behind, new and empty), and again once Ray
    has started (here, Ray's count set by RAY_OVERRIDE_RESOURCES, which the first check skips)."""
    new, store = tmp_path / "new.db", fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "huge", dataset, resources={"cpus_per_trial": 4096})
    for uri, env in ((f"sqlite:///{new}", ENV),
                     (store, {**ENV, "RAY_OVERRIDE_RESOURCES": '{"CPU": 2}'})):
        proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri, "--storage",
                          str(tmp_path / "ray")], cwd=tmp_path, timeout=120, env=env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        message = " ".join(proc.stderr.split())
        assert "resources.cpus_per_trial: a trial needs 4096 CPUs and 0 GPUs" in message
        assert "but Ray counts" in message and "GPUs on this machine" in message
        assert not (tmp_path / "ray" / "huge").exists()  # no study to resume
    assert not new.exists()
    from mlflow import MlflowClient

    assert MlflowClient(tracking_uri=store).get_experiment_by_name("huge") is None


@pytest.mark.skipif(torch.cuda.device_count() > 0 or torch.version.cuda is None,
                    reason="this machine has a GPU, or torch is a CPU build")
def test_a_gpu_study_on_a_machine_without_one_fails_before_preparing_its_corpus(
        tmp_path: Path) -> None:
    """lm.yaml's trials take a GPU: without one, nothing is downloaded, prepared or recorded."""
    space = tmp_path / "gpu.yaml"
    quickstart = (Path(__file__).parents[1] / "search_spaces" / "quickstart.yaml").read_text()
    space.write_text(quickstart.replace("gpus_per_trial: 0\n", "gpus_per_trial: 0.25\n")
                     .replace("device: cpu", "device: cuda"))
    proc = run_tuner(["search", "--space", str(space), "--storage", str(tmp_path / "ray")],
                     cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "resources.gpus_per_trial: a trial needs 0.25 GPU, but torch sees no GPU" in " ".join(
        proc.stderr.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu.yaml"]  # no corpus, store, study



def _processes_marked(mark: str) -> list[int]:
    """The processes whose environment holds `mark` (each Ray server inherits the driver's)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_local_ray_that_does_not_start_fails_in_words_and_leaves_no_process(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """Ray's start fails at once here (its GCS given 0 s to bind its port, as a busy machine
    outlasts Ray's fixed 30 s): tried twice, then one line, exit 1, no traceback, no Ray server
    left of either try, and no MLflow run."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "nostart", dataset)
    mark = f"TUNER_TEST_MARK=nostart-{os.getpid()}-{time.monotonic_ns()}"
    env = {**ENV, "RAY_gcs_server_port_wait_time_s": "0", mark.split("=")[0]: mark.split("=")[1]}
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri, "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path, timeout=300, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    said = " ".join(proc.stdout.split())
    assert said.startswith("error: the local Ray did not start in ") and all(
        re.search(words, said) for words in (r" \d+ s\b", r"load \d+\.\d on \d+ cores",
                                              r"\(Ray: Timed out waiting for file \S*gcs_server_port")
    ), said
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert _processes_marked(mark) == []
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("nostart")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []
