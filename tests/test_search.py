"""`tuner search` end to end: real Ray (a local instance per study), real MLflow (sqlite, a server).

One small grid study is shared by most assertions: it has trials that complete, trials ASHA
stops, one that diverges (α_max = 50) and some that fail (a model vocabulary smaller than the
dataset's). Other tests stop a driver with SIGKILL or SIGTERM and resume it, and run against
`mlflow server` and a `ray start --head` cluster. Input errors are checked to fail before Ray
starts, or, for a trial larger than the local Ray, before any trial does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from model.config import train_config_from_dict
from model.schedules import LRSchedule

sys.path.insert(0, str(Path(__file__).parent))
from services import ServiceUnavailable, free_port, mlflow_server, ray_head  # noqa: E402

TUNER = Path(sys.executable).with_name("tuner")
ENV = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},  # the tests' store
       "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
       "PYTHONFAULTHANDLER": "1"}  # SIGABRT prints every thread's stack
AWS_SECRET = "faults-study-aws-secret-4242"


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
                      env: dict[str, str] | None = None
                      ) -> tuple[subprocess.CompletedProcess, list]:
    """`tuner search --resume` of study `name`, which must finish with `completed` completed
    trials: the command and the study's trial runs."""
    proc = run_tuner(["search", "--resume", "--name", name, "--storage", str(storage)], cwd=cwd,
                     env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, parent, runs = mlflow_runs(uri, name)
    assert parent.info.status == "FINISHED"
    assert [r.data.tags["tuner.status"] for r in runs] == ["completed"] * completed
    return proc, runs


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


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic-text dataset with a trained BPE tokenizer (vocabulary 300), so trials sample."""
    from tuner.datasets import prepare_dataset

    cache = tmp_path_factory.mktemp("search_data")
    return prepare_dataset(source="synthetic", vocab_size=300, synthetic_bytes=200_000,
                           cache_dir=cache, progress=False)


@pytest.fixture(scope="module")
def faults_study(tmp_path_factory: pytest.TempPathFactory, dataset: Path,
                 mlflow_store_template: Path) -> Iterator[dict[str, Any]]:
    """One grid study of 8 trials (ASHA, rungs every 5,120 tokens): vocabulary 256 fails on the
    300-token dataset; α_max 1e-2 trains well, 1e-3 and 1e-4 worse (ASHA's prey), 50 diverges.
    Its local Ray keeps its files in a folder of its own, and the driver has an AWS key."""
    folder = tmp_path_factory.mktemp("faults")
    uri = fresh_store(folder, mlflow_store_template)
    space = write_space(folder, "faults", dataset, model={"vocab_size": {"grid": [256, 300]}},
                        hparams={"lr_max": {"grid": [1e-2, 50.0, 1e-3, 1e-4]}},
                        search={"algorithm": "grid", "scheduler": "asha",
                                "asha": {"grace_period": 5120, "reduction_factor": 2}})
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's sockets live in it
    env = {**ENV, "RAY_TMPDIR": str(ray_tmp), "AWS_SECRET_ACCESS_KEY": AWS_SECRET}
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri,
                      "--storage", str(folder / "ray")], cwd=folder, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield {"proc": proc, "uri": uri, "folder": folder, "space": space, "ray_tmp": ray_tmp}
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_study_records_parent_and_children(faults_study: dict[str, Any], dataset: Path) -> None:
    from tuner.space.params import shown_value

    client, parent, children = mlflow_runs(faults_study["uri"], "faults")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["tuner.study"] == "faults"
    assert len(parent.data.tags["tuner.git_commit"]) >= 40
    assert parent.data.tags["tuner.version.torch"]
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"space.yaml", "study.json", "dataset_meta.json", "versions.json"} <= parent_files
    meta = json.loads(Path(client.download_artifacts(parent.info.run_id, "dataset_meta.json"))
                      .read_text())
    assert meta == json.loads((dataset / "meta.json").read_text())
    # names of their own: MLflow's charts keep the study's curves apart from the trials'
    assert parent.data.metrics["study/trials_finished"] == 8
    assert parent.data.metrics["study/tokens_trained"] > 40960
    assert not set(parent.data.metrics) & {"best_val_loss", "tokens_trained", "val_loss"}

    assert len(children) == 8
    assert len({r.data.tags["tuner.trial_id"] for r in children}) == 8
    for run in children:  # the one name the console, `tuner best` and MLflow's runs table show
        assert run.info.run_name == f"faults-{run.data.tags['tuner.trial_id']}"
    assert not [r for r in children if r.info.status == "RUNNING"]
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert tags["tuner.study"] == "faults"
        assert tags["tuner.seed"] == "0"
        assert tags["tuner.dataset_sha256"] == parent.data.tags["tuner.dataset_sha256"]
        symbols = json.loads(tags["tuner.symbols"])
        assert (symbols["lr_max"], symbols["beta2"]) == ("α_max", "β2")
        assert set(symbols) == set(params) and not [t for t in tags if "symbol." in t]
        assert {"lr_max", "vocab_size", "beta2", "weight_decay", "batch_size",
                "eval_interval"} <= set(params)
        # only what AdamW with a cosine schedule and a token budget uses
        assert not {"momentum", "lars_trust", "plateau_factor", "step_gamma", "exp_rate",
                    "cycle_mult", "total_iters", "eval_tokens"} & set(params)
        note = tags["mlflow.note.content"]  # the top of the run's page: outcome, searched values
        assert note.startswith(f"**{tags['tuner.status']}")
        assert f"- `lr_max` (α_max) = {shown_value('lr_max', params['lr_max'])}\n" in note
        config = json.loads(Path(client.download_artifacts(run.info.run_id, "trial_config.json"))
                            .read_text())
        assert float(params["lr_max"]) == config["lr_max"]
        assert config["total_tokens"] == 40960  # the cosine horizon is the full budget
        per_step = config["batch_size"] * config["model"]["context_length"]
        epochs = math.ceil(math.ceil(40960 / per_step) * per_step / meta["train_tokens"])
        assert (params["epochs"], symbols["epochs"]) == (str(epochs), "N_epoch")
        trained = tags["tuner.status"] != "failed"  # the failed ones never reached a step
        assert tags.get("tuner.device") == ("cpu" if trained else None)


def _readable_by_others(path: Path, root: Path) -> bool:
    """Whether users other than the owner can read `path`: it is o+r, and every folder from
    `root` (Ray's temporary folder, /tmp/ray, which Ray opens to all) down to it is o+x."""
    folders = [folder for folder in path.parents if folder.is_relative_to(root) and folder != root]
    return bool(path.stat().st_mode & 0o004) and all(f.stat().st_mode & 0o001 for f in folders)


@pytest.mark.slow
@pytest.mark.parametrize("secret", ["aws key", "tracking uri"])
def test_rays_files_that_hold_secrets_are_private(faults_study: dict[str, Any],
                                                  secret: str) -> None:
    """Ray's runtime-env agent logs the AWS keys Tune forwards to trials, and Tune stages the
    study (its searcher, with the tracking URI) in Ray's session folder: only the user may read
    the files of the local Ray a study started."""
    text = AWS_SECRET if secret == "aws key" else faults_study["uri"]
    root = faults_study["ray_tmp"]
    holding = [path for path in root.rglob("*") if path.is_file() and not path.is_symlink()
               and text.encode() in path.read_bytes()]
    assert holding  # the secret reached Ray's folder: what this test is about
    assert [str(path) for path in holding if _readable_by_others(path, root)] == []


@pytest.mark.slow
def test_trials_write_their_checkpoints_under_the_users_umask(faults_study: dict[str, Any]
                                                              ) -> None:
    """Ray's processes run under umask 077 (their logs hold secrets); a trial's files do not:
    its checkpoints, and the MLflow artifacts copied from them, are as the user's umask makes
    them (a group-shared store stays readable)."""
    umask = os.umask(0o022)
    os.umask(umask)
    checkpoints = list(faults_study["folder"].rglob("checkpoint.pt"))
    assert any("artifacts" in path.parts for path in checkpoints)  # MLflow's copies among them
    assert {oct(path.stat().st_mode & 0o777) for path in checkpoints} == {oct(0o666 & ~umask)}


@pytest.mark.slow
def test_a_trial_that_diverges_after_the_best_loss_so_far_is_not_the_best(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """α_max 5 reaches the study's lowest val_loss early in its warmup, then diverges: the
    study's best goes back to the trial that barely learned, in MLflow and in the summary."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "relapse", dataset,
                        hparams={"lr_max": {"grid": [1e-9, 5.0]}, "warmup_iters": 70},
                        search={"algorithm": "grid", "scheduler": "none", "max_concurrent": 1})
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri, "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client, parent, children = mlflow_runs(uri, "relapse")
    [slow], [relapse] = by_status(children)["completed"], by_status(children)["diverged"]
    early = min(m.value for m in client.get_metric_history(relapse.info.run_id, "val_loss"))
    assert early < slow.data.metrics["best_val_loss"]  # it was the best while it trained
    study_best = [m.value for m in client.get_metric_history(parent.info.run_id,
                                                             "study/best_val_loss")]
    assert early in study_best
    assert parent.data.metrics["study/best_val_loss"] == slow.data.metrics["best_val_loss"]
    note = parent.data.tags["mlflow.note.content"]  # the winner, not the one that diverged
    assert note.startswith(f"**Best: trial {slow.data.tags['tuner.trial_id']}**, best val_loss "
                           f"{slow.data.metrics['best_val_loss']:.4f}.\n")
    assert "2 trials: 1 completed, 1 diverged." in note
    assert parent.data.tags["tuner.best_run_id"] == slow.info.run_id
    assert f"MLflow run {slow.info.run_id}" in proc.stdout
    assert relapse.info.run_id not in proc.stdout.split("best trial")[-1]


@pytest.mark.slow
def test_metrics_samples_and_checkpoints(faults_study: dict[str, Any]) -> None:
    client, _, children = mlflow_runs(faults_study["uri"], "faults")
    completed = by_status(children)["completed"]
    assert completed
    for run in completed:
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in history] == [5120 * k for k in range(1, 9)]  # step = tokens
        for key in ("train_loss", "val_ppl", "lr", "grad_norm", "tokens_per_s", "mfu"):
            assert len(client.get_metric_history(run.info.run_id, key)) == 8, key
        sample = Path(client.download_artifacts(run.info.run_id, "sample.txt")).read_text()
        assert sample.startswith('# sample at 40,960 tokens (step 80)\n'
                                 '# prompt: "Once upon a time"\nOnce upon a time')
        checkpoint = Path(client.download_artifacts(run.info.run_id, "checkpoint/checkpoint.pt"))
        digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        assert digest == run.data.tags["tuner.checkpoint_sha256"]
        import torch

        assert torch.load(checkpoint, weights_only=True)["iteration"] == 80  # the final one
        mid = Path(client.download_artifacts(run.info.run_id, "checkpoint_mid/checkpoint.pt"))
        assert hashlib.sha256(mid.read_bytes()).hexdigest() == run.data.tags[
            "tuner.checkpoint_mid_sha256"]
        assert torch.load(mid, weights_only=True)["iteration"] == 40  # half-way
        searched = json.loads(Path(client.download_artifacts(run.info.run_id, "searched.json"))
                              .read_text())
        assert searched == {"vocab_size": 300, "lr_max": float(run.data.params["lr_max"])}
        assert run.data.tags["tuner.threads"] == "1"
    stopped = by_status(children)["stopped"]
    for run in stopped:  # not every intermediate checkpoint: none for trials ASHA stopped
        assert not client.list_artifacts(run.info.run_id, "checkpoint")
        last = max(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        sample = Path(client.download_artifacts(run.info.run_id, "sample.txt")).read_text()
        # its last evaluation's, 512 tokens a step
        assert sample.startswith(f"# sample at {last:,} tokens (step {last // 512})\n")


@pytest.mark.slow
def test_tunes_folder_keeps_only_the_best_trials_checkpoint(faults_study: dict[str, Any]) -> None:
    """A resume runs no ended trial again and MLflow holds the checkpoints it logs, so the study's
    folder keeps only the best trial's latest checkpoint (logged when the study ends) and its
    mid-trial one."""
    _, parent, _ = mlflow_runs(faults_study["uri"], "faults")
    best = parent.data.tags["tuner.best_trial_id"]
    folder = faults_study["folder"] / "ray" / "faults"
    kept = [p.parent.name for p in folder.glob("trial_*/checkpoint_*")]
    assert kept == [f"trial_{best}"]  # one checkpoint, of one trial
    assert [p.name for p in (folder / "mid_checkpoints").iterdir()] == [best]


@pytest.mark.slow
def test_asha_stops_trials(faults_study: dict[str, Any]) -> None:
    client, _, children = mlflow_runs(faults_study["uri"], "faults")
    stopped = by_status(children).get("stopped", [])
    assert stopped, [r.data.tags["tuner.status_detail"] for r in children]
    for run in stopped:
        assert run.info.status == "FINISHED"
        assert "stopped by ASHA at rung" in run.data.tags["tuner.status_detail"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert steps and max(steps) < 40960
        # its learning rate followed the cosine of the full budget, not of where it stopped
        config = train_config_from_dict(json.loads(Path(client.download_artifacts(
            run.info.run_id, "trial_config.json")).read_text()))
        last = client.get_metric_history(run.info.run_id, "lr")[-1]
        full = LRSchedule.from_config(config)
        assert last.value == full.lr(last.step // config.tokens_per_step - 1) > config.lr_min


@pytest.mark.slow
def test_failed_and_diverged_trials(faults_study: dict[str, Any]) -> None:
    client, parent, children = mlflow_runs(faults_study["uri"], "faults")
    grouped = by_status(children)
    failed = grouped["failed"]
    assert len(failed) == 4 and {r.data.params["vocab_size"] for r in failed} == {"256"}
    for run in failed:
        assert run.info.status == "FAILED"
        assert "vocab" in run.data.tags["tuner.status_detail"]
        assert "ConfigError" in run.data.tags["tuner.error"]
        assert run.data.tags["tuner.failed_in"] == "trainer"  # the searcher was told inf
    [diverged] = grouped["diverged"]
    assert float(diverged.data.params["lr_max"]) == 50.0
    assert diverged.info.status == "FINISHED"
    history = client.get_metric_history(diverged.info.run_id, "val_loss")
    assert history[-1].value > 1e300  # inf, the worst value, as MLflow stores it
    assert max(m.step for m in history) < 40960  # stopped early
    assert parent.data.metrics["study/trials_failed"] == 4
    assert parent.data.metrics["study/trials_diverged"] == 1


def _run_study(tmp_path: Path, space: Path, template: Path) -> tuple[str, Any, list[Any], str]:
    """Run the study in `space` to its end; its store's URI, parent run, child runs and output."""
    uri = fresh_store(tmp_path, template)
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri, "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Error handling checkpoint" not in proc.stderr  # Tune lost none of the trials' files
    _, parent, children = mlflow_runs(uri, yaml.safe_load(space.read_text())["name"])
    assert parent.info.status == "FINISHED"
    assert not [r for r in children if r.info.status == "RUNNING"]
    return uri, parent, children, proc.stdout


@pytest.mark.slow
def test_hyperband_study(tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """HyperBand stops trials. With a budget of 8 grace periods (max_t 3 units of a third of it,
    η 3) it fills its brackets from the least aggressive: 2 trials of the full budget, then a
    bracket of 3 that keeps 1 at 1 unit and trains it to the full budget, then a new round's
    first bracket: 1 more of the full budget."""
    space = write_space(tmp_path, "hyperband", dataset,
                        hparams={"lr_max": {"loguniform": [1e-4, 0.1]}},
                        search={"scheduler": "hyperband", "num_samples": 6, "max_concurrent": None,
                                "algorithm": "random", "asha": {"grace_period": 5120}})
    uri, parent, children, _ = _run_study(tmp_path, space, mlflow_store_template)
    assert parent.data.tags["tuner.scheduler"] == "hyperband" and len(children) == 6
    _assert_stopped_by(uri, children, "HyperBand", budget=40960)
    grouped = by_status(children)
    assert (len(grouped["completed"]), len(grouped["stopped"])) == (4, 2)
    # Tune's state keeps trials HyperBand paused at the full budget: restored, they trained on
    # (and the driver spun); a study that ended resumes to its summary alone
    proc = run_tuner(["search", "--resume", "--name", "hyperband", "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "study hyperband finished: 4 completed, 2 stopped" in proc.stdout
    _, again, after = mlflow_runs(uri, "hyperband")
    assert {(r.info.run_id, r.info.end_time) for r in after} == \
        {(r.info.run_id, r.info.end_time) for r in children}
    assert again.info.end_time == parent.info.end_time


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


@pytest.mark.slow
def test_an_unfinished_hyperband_study_is_not_resumed(tmp_path: Path, dataset: Path,
                                                      mlflow_store_template: Path) -> None:
    """Ray Tune saves no HyperBand brackets: a resumed study waited for ever on trials they had
    paused. `--resume` refuses it before Ray starts (exit 2) and names --warm-start."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "killed", dataset,
                        search={"scheduler": "hyperband", "num_samples": 6, "max_concurrent": None,
                                "algorithm": "random", "asha": {"grace_period": 5120}})
    storage = tmp_path / "ray"
    driver = start_search(space, uri, storage, tmp_path)
    _wait_until(uri, driver, lambda runs, tokens: any(tokens.values()))
    trial_processes = [pid for pid, cmd in _descendants(driver.pid)
                       if cmd.startswith("ray::ImplicitFunc")]
    driver.send_signal(signal.SIGINT)
    out, said = driver.communicate(timeout=120)
    assert driver.returncode == 130
    _wait_exited(trial_processes)  # none writes in the study's folder after the snapshot below
    assert out.splitlines()[-1] == ("continue it with: tuner search --space FILE --name NEW "
                                    "--warm-start killed (a HyperBand study cannot be resumed)")
    # the last frame, as MLflow records them: no trial left "paused" or "running"
    headline = next(line for line in reversed(said.splitlines()) if "random + hyperband" in line)
    assert re.search(r"\b\d+ interrupted\b", headline), said
    assert not re.search(r"\b\d+ (paused|running)\b", headline), said
    saved = sorted((p, p.stat().st_mtime_ns) for p in storage.rglob("*"))
    proc = run_tuner(["search", "--resume", "--name", "killed", "--storage", str(storage)],
                     cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "uses HyperBand" in proc.stderr and "--warm-start killed" in proc.stderr
    assert sorted((p, p.stat().st_mtime_ns) for p in storage.rglob("*")) == saved


@pytest.mark.slow
def test_pbt_study_perturbs_within_the_space(tmp_path: Path, dataset: Path,
                                             mlflow_store_template: Path) -> None:
    """PBT (random population; α_max and β2 perturbed every 10240 tokens): the trial that is
    behind takes the other's weights and perturbed values, recorded as hp.* metrics and the
    tuner.pbt_config tag, and β2 stays inside its range. PBT draws γ_step for every trial; only
    a trial on the step schedule uses and records it. Each trial takes every core, so one trains
    at a time and PBT takes turns: the other waits for resources, and PBT pauses a trial at each
    perturbation point while another waits, so the two meet there in the same order however
    fast the machine is. (Two at once, one trial could end before the other's first report on a
    loaded machine, leaving PBT nothing to compare it with.)"""
    from ray._private.utils import get_num_cpus  # the cores the local Ray counts

    space = write_space(tmp_path, "pbt", dataset,
                        hparams={"lr_max": {"loguniform": [1e-4, 3e-2]},
                                 "beta2": {"uniform": [0.9, 0.99]},
                                 "schedule": {"choice": ["step", "cosine"]},
                                 "step_gamma": {"uniform": [0.2, 0.8]}},
                        search={"scheduler": "pbt", "num_samples": 2,
                                "pbt": {"perturbation_interval": 10240, "quantile_fraction": 0.5}},
                        resources={"cpus_per_trial": get_num_cpus()})
    uri, parent, children, out = _run_study(tmp_path, space, mlflow_store_template)
    assert parent.data.tags["tuner.algorithm"] == "random" and len(children) == 2
    assert {r.data.tags["tuner.status"] for r in children} == {"completed"}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    schedules = {run.data.params["schedule"] for run in children}
    assert "cosine" in schedules
    for run in children:
        on_step = run.data.params["schedule"] == "step"
        assert ("step_gamma" in run.data.tags["tuner.searched"].split(",")) == on_step
        assert ("step_gamma" in run.data.params) == on_step  # logged where it is used
        # the latest best_val_loss (what `tuner best` ranks by) is the best, clone or not
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert run.data.metrics["best_val_loss"] == min(m.value for m in history)
    exploited = [r for r in children if "tuner.pbt_config" in r.data.tags]
    assert exploited
    for run in exploited:
        beta2 = client.get_metric_history(run.info.run_id, "hp.beta2")
        lr = client.get_metric_history(run.info.run_id, "hp.lr_max")
        assert beta2 and lr and all(0.9 <= m.value <= 0.99 for m in beta2)
        config = json.loads(run.data.tags["tuner.pbt_config"])
        assert config["beta2"] == beta2[-1].value
        assert ("step_gamma" in config) == (config["schedule"] == "step")
    _pbt_study_inspected(client, uri, children, tmp_path, out)
    _assert_tokens_counted_once(client, parent, children, interval=5120)


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


def _pbt_study_inspected(client: Any, uri: str, children: list[Any], tmp_path: Path,
                         out: str) -> None:
    """The summary, `tuner best` and the report show the values a PBT trial ended with, and say
    it cannot be replayed; a warm start, which pairs values with a loss, refuses the study."""
    from tuner.errors import UserError
    from tuner.inspect import best, report
    from tuner.search import history
    from tuner.space.params import shown_value

    rows = best.top_trials(client, "pbt", 2)
    for row in rows:
        run = next(r for r in children if r.info.run_id == row.run_id)
        final = json.loads(run.data.tags.get("tuner.pbt_config", "null"))
        assert row.pbt == (final is not None) and row.status.endswith("(PBT)") == row.pbt
        assert row.params["lr_max"] == str(final["lr_max"] if final else run.data.params["lr_max"])
    with pytest.raises(UserError, match="ran PBT"):
        history.earlier_study("pbt", uri)
    report.write_report(client, "pbt", tmp_path / "report", tmp_path)
    summary = (tmp_path / "report" / report.SUMMARY_MD).read_text()
    _, parent, _ = mlflow_runs(uri, "pbt")
    assert f"{int(parent.data.metrics['study/tokens_trained']):,} tokens trained in all" in summary
    assert ("no one config reproduces it" in summary) == rows[0].pbt
    assert ("tuner replay" in summary) != rows[0].pbt and "Not computed: PBT changed" in summary
    assert ("no one config reproduces it" in out) == rows[0].pbt != ("tuner replay" in out)
    assert f"lr_max={shown_value('lr_max', rows[0].params['lr_max'])}" in out  # 4 digits


@pytest.mark.parametrize("algorithm", ["tpe", "random", "grid", "cmaes", "gp", "qmc"])
def test_every_searcher_suggests_seeded_trials_in_the_space(tmp_path: Path, dataset: Path,
                                                            algorithm: str) -> None:
    """Each algorithm, built as a study builds it (Optuna's sampler behind Ray's OptunaSearch),
    suggests values from the space, and the same seed suggests the same trials."""
    if algorithm == "cmaes":
        pytest.importorskip("cmaes")
    from tuner.search.algorithms import build_searcher
    from tuner.space import load_study

    grid = algorithm == "grid"
    hparams = ({"lr_max": {"grid": [1e-3, 3e-3, 1e-2]}} if grid else
               {"lr_max": {"loguniform": [1e-4, 1e-2]}, "beta2": {"uniform": [0.9, 0.99]}})
    study = load_study(write_space(tmp_path, algorithm, dataset, hparams=hparams,
                                   search={"algorithm": algorithm, "num_samples": 3}))

    def suggestions() -> list[dict[str, Any]]:
        searcher, suggested = build_searcher(study), []
        for i in range(3):
            suggested.append(searcher.suggest(f"t{i}"))
            searcher.on_trial_complete(f"t{i}", {"val_loss": 5.0 - i, "tokens": 40960})
        return suggested

    first = suggestions()
    assert first == suggestions()
    if grid:
        assert sorted(s["lr_max"] for s in first) == [1e-3, 3e-3, 1e-2]
    else:
        assert all(1e-4 <= s["lr_max"] <= 1e-2 and 0.9 <= s["beta2"] <= 0.99 for s in first)
        assert len({s["lr_max"] for s in first}) == 3


def test_a_trial_its_optuna_storage_ended_reports_again_after_a_resume(tmp_path: Path,
                                                                        dataset: Path) -> None:
    """With `search.storage`, a driver killed after telling the database a trial ended, before
    Tune saved its state, resumes the trial: its next result is taken as that of a finished
    trial, not an error that fails the study on every resume."""
    import optuna

    from tuner.search.algorithms import build_searcher
    from tuner.space import load_study

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = load_study(write_space(tmp_path, "told", dataset,
                                   hparams={"lr_max": {"loguniform": [1e-4, 1e-2]}},
                                   search={"algorithm": "tpe", "storage": storage}))
    searcher = build_searcher(study)
    searcher.suggest("t0")
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last save
    searcher.on_trial_complete("t0", {"val_loss": 3.0, "training_iteration": 4})
    resumed = build_searcher(study)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.on_trial_result("t0", {"val_loss": 3.0, "training_iteration": 4})
    resumed.on_trial_complete("t0", {"val_loss": 3.0, "training_iteration": 4})
    trials = optuna.load_study(study_name="told", storage=storage).trials
    assert [(t.state, t.value) for t in trials] == [(optuna.trial.TrialState.COMPLETE, 3.0)]


@pytest.mark.slow
def test_summary_names_best_trial(faults_study: dict[str, Any]) -> None:
    _, parent, children = mlflow_runs(faults_study["uri"], "faults")
    best = min(children, key=lambda r: r.data.metrics.get("best_val_loss", math.inf))
    out = faults_study["proc"].stdout
    assert f"best trial {best.data.tags['tuner.trial_id']}: MLflow run {best.info.run_id}" in out
    assert f"val_loss {best.data.metrics['best_val_loss']:.4f}" in out
    assert f"tuner replay {best.info.run_id} --tracking-uri {faults_study['uri']}" in out
    assert parent.data.tags["tuner.best_run_id"] == best.info.run_id


@pytest.mark.slow
def test_log_has_a_line_per_finished_trial(faults_study: dict[str, Any]) -> None:
    """Where stderr is a file, not a terminal, each trial's end is a line of its own (how it
    ended, as MLflow records it) and the last frame follows, ending its line."""
    _, _, children = mlflow_runs(faults_study["uri"], "faults")
    log = faults_study["proc"].stderr
    lines = [line for line in log.splitlines() if "; its best val_loss " in line]
    assert len(lines) == len(children) == 8
    for run in children:
        start = f"trial {run.data.tags['tuner.trial_id']} {run.data.tags['tuner.status_detail']};"
        assert sum(line.startswith(start) for line in lines) == 1, start
    assert "; 8 of 8 finished; tokens " in lines[-1]
    best = min(children, key=lambda r: r.data.metrics.get("best_val_loss", math.inf))
    assert (f"; study best {best.data.metrics['best_val_loss']:.4f} "
            f"(trial {best.data.tags['tuner.trial_id']}); 8 of 8") in lines[-1]
    assert log.index("study faults  grid + asha") > log.index(lines[-1]) and log.endswith("\n")


@pytest.mark.slow
def test_existing_study_needs_resume(faults_study: dict[str, Any]) -> None:
    proc = run_tuner(["search", "--space", str(faults_study["space"]), "--tracking-uri",
                      faults_study["uri"], "--storage", str(faults_study["folder"] / "ray")],
                     cwd=faults_study["folder"], timeout=120)
    assert proc.returncode == 2
    assert "--resume --name faults" in " ".join(proc.stderr.split())


@pytest.mark.slow
def test_resume_without_the_tracking_store_it_ran_with_fails(faults_study: dict[str, Any]) -> None:
    """A study whose trials ran is not resumed into a store that lacks it (a new, empty parent
    run would follow); the command names the store and starts nothing."""
    folder = faults_study["folder"]
    store = Path(faults_study["uri"].removeprefix("sqlite:///"))
    store.rename(store.with_suffix(".moved"))
    try:
        proc = run_tuner(["search", "--resume", "--name", "faults", "--storage",
                          str(folder / "ray")], cwd=folder, timeout=120)
    finally:
        store.unlink(missing_ok=True)  # the empty store the command found there
        store.with_suffix(".moved").rename(store)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"at {faults_study['uri']} no longer holds study 'faults'" in " ".join(
        proc.stderr.split())


@pytest.mark.slow
def test_resume_from_state_cut_short_without_a_copy_fails(faults_study: dict[str, Any],
                                                          tmp_path: Path) -> None:
    """Tune's state cut short, and no whole copy kept (a study started before tuner kept one):
    --resume names the file, exits 2 and changes nothing."""
    storage = tmp_path / "ray"
    shutil.copytree(faults_study["folder"] / "ray", storage, symlinks=True)
    (storage / "faults" / "tune_state.zip").unlink()
    _cut_short_as_tune_copies_it(storage / "faults")
    def files() -> dict[Path, bytes]:  # but the driver's lock, which names the last to take it
        return {path: path.read_bytes() for path in (storage / "faults").iterdir()
                if path.is_file() and path.name != "driver.lock"}

    before = files()
    proc = run_tuner(["search", "--resume", "--name", "faults", "--storage", str(storage)],
                     cwd=faults_study["folder"], timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    damaged = max((storage / "faults").glob("experiment_state-*.json"))
    assert f"{damaged}: cut short" in " ".join(proc.stderr.split())
    assert files() == before


@pytest.mark.slow
def test_resuming_a_finished_study_reruns_nothing(faults_study: dict[str, Any]) -> None:
    """`--resume` of a study that has ended trains nothing, leaves its trial runs as they were,
    and shows every trial as it ended (none "interrupted"), once or twice; the other code it runs
    on now is warned of and tagged. The command it started with, retyped with --resume and
    options equal to those it started with, is the same resume."""
    folder = faults_study["folder"]
    client, parent, before = mlflow_runs(faults_study["uri"], "faults")
    commit = parent.data.tags["tuner.git_commit"]
    client.set_tag(parent.info.run_id, "tuner.git_commit", "0" * 40)  # started by other code
    retyped = ["--space", str(faults_study["space"]), "--tracking-uri", faults_study["uri"],
               "--num-samples", "8", "--max-concurrent", "2", "--seed", "0"]
    try:
        for given in (["--name", "faults"], retyped):  # the second reads the state the first saved
            proc = run_tuner(["search", "--resume", *given, "--storage", str(folder / "ray")],
                             cwd=folder, timeout=180)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "warning: Tune's state" not in proc.stdout + proc.stderr  # not part-written
    finally:
        client.set_tag(parent.info.run_id, "tuner.git_commit", commit)
    _, parent, after = mlflow_runs(faults_study["uri"], "faults")
    client.delete_tag(parent.info.run_id, "tuner.git_commit_resumed")
    assert parent.data.tags["tuner.git_commit_resumed"] == commit
    assert f"the code is at {commit}, the study started at {'0' * 40}" in " ".join(
        (proc.stdout + proc.stderr).split())
    assert parent.info.status == "FINISHED"
    def ended(runs: list[Any]) -> set[tuple[Any, ...]]:
        return {(r.info.run_id, r.info.status, r.data.tags["tuner.status"], r.info.end_time)
                for r in runs}

    assert ended(after) == ended(before)
    frame = proc.stderr[proc.stderr.index("study faults  grid + asha"):]
    headline, progress = frame.splitlines()[:2]
    for status, count in Counter(r.data.tags["tuner.status"] for r in after).items():
        assert f"{count} {status}" in headline
    assert progress.endswith("ETA ≤ 0:00:00") and "interrupted" not in frame
    for run in after:
        row = rf"^{run.data.tags['tuner.trial_id']} +{run.data.tags['tuner.status']} "
        assert re.search(row, frame, re.MULTILINE), row


@pytest.mark.slow
def test_trials_ended_while_the_store_failed_end_on_resume(faults_study: dict[str, Any]) -> None:
    """Trials Tune ended (stopped by ASHA, failed, diverged) whose end the tracking store did not
    take are ended by the next --resume as they ended, not as "interrupted" for good."""
    folder = faults_study["folder"]
    client, _, runs = mlflow_runs(faults_study["uri"], "faults")
    picked = {}
    for run in runs:
        picked.setdefault(run.data.tags["tuner.status"], run)
    assert {"stopped", "failed", "diverged"} <= set(picked)
    for run in picked.values():  # what a store failing inside the trial's end leaves
        client.update_run(run.info.run_id, status="RUNNING")
        client.delete_tag(run.info.run_id, "tuner.status")
    proc = run_tuner(["search", "--resume", "--name", "faults", "--storage", str(folder / "ray")],
                     cwd=folder, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, parent, after = mlflow_runs(faults_study["uri"], "faults")
    assert parent.info.status == "FINISHED"
    now = {r.info.run_id: r for r in after}
    for status, run in picked.items():
        again = now[run.info.run_id]
        assert again.data.tags["tuner.status"] == status
        assert again.info.status == run.info.status
        assert again.data.tags["tuner.status_detail"] == run.data.tags["tuner.status_detail"]


@pytest.mark.slow
def test_a_trial_the_os_kills_past_its_retries_fails_unscored(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """With no retries left, Tune fails a trial whose process was killed: its run is failed in
    the process, which its searcher was never told a value of, so a warm start leaves it out.
    A resume does not run it again, and MLflow logs no checkpoint of it: none is kept."""
    from tuner.search import history

    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "lost", dataset, budget={"tokens": 245760, "eval_interval": 20},
                        hparams={"lr_max": {"loguniform": [1e-3, 1e-2]}},
                        search={"algorithm": "tpe", "scheduler": "none", "num_samples": 1,
                                "max_failures": 0})
    driver = start_search(space, uri, tmp_path / "ray", tmp_path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        # the third evaluation: the first two checkpoints are registered
        _wait_until(uri, driver, lambda runs, tokens: max(tokens.values(), default=0) >= 61440,
                    study="lost")
        for pid, cmd in _descendants(driver.pid):
            if cmd.startswith("ray::ImplicitFunc"):
                os.kill(pid, signal.SIGKILL)
        assert driver.wait(timeout=120) == 1  # no trial to replay
    finally:
        driver.kill()
    assert not list((tmp_path / "ray" / "lost").glob("*/checkpoint_*"))
    _, parent, [run] = mlflow_runs(uri, "lost")
    assert (run.info.status, run.data.tags["tuner.status"]) == ("FAILED", "failed")
    assert run.data.tags["tuner.failed_in"] == "process"
    assert parent.data.metrics["study/trials_failed"] == 1
    assert history.earlier_study("lost", uri)[1] == []


@pytest.mark.slow
def test_os_kill_retries_and_driver_sigkill_resumes(tmp_path: Path, dataset: Path,
                                                    mlflow_store_template: Path) -> None:
    """A trial process killed by the OS is retried from its checkpoint; a study whose driver is
    killed with SIGKILL resumes with the same runs, rerunning nothing that had finished, even when
    the kill cut Tune's state short. Its local Ray listens on 127.0.0.1 only."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "killed", dataset,
                        hparams={"lr_max": {"loguniform": [1e-3, 1e-2]}},
                        budget={"tokens": 122880, "eval_interval": 20},
                        search={"algorithm": "tpe", "scheduler": "none", "num_samples": 6})
    storage = tmp_path / "ray"
    driver = start_search(space, uri, storage, tmp_path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        _wait_until(uri, driver, lambda runs, tokens: max(tokens.values(), default=0) >= 20480)
        local_ray = _descendants(driver.pid)
        listening = _listen_addresses({driver.pid, *(pid for pid, _ in local_ray)})
        assert listening and listening <= LOOPBACK, listening  # servers bind 127.0.0.1 only
        workers = [pid for pid, cmd in local_ray if cmd.startswith("ray::ImplicitFunc")]
        assert workers
        for pid in workers:  # what the OS's OOM killer would do
            os.kill(pid, signal.SIGKILL)
        _wait_until(uri, driver, lambda runs, tokens: any(
            r.info.status == "FINISHED" for r in runs) and any(
            r.info.status == "RUNNING" and tokens[r.info.run_id] >= 30720 for r in runs))
    finally:
        trial_processes = [pid for pid, cmd in _descendants(driver.pid)
                           if cmd.startswith("ray::ImplicitFunc")]
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    _wait_exited(trial_processes)  # they outlive the driver by a second or two, checkpointing
    client, _, before = mlflow_runs(uri, "killed")
    finished_before = {r.info.run_id: r for r in before if r.info.status == "FINISHED"}
    assert finished_before and len(finished_before) < 6
    retried = [r for r in before if r.data.tags.get("tuner.retries") == "1"]
    assert len(retried) == len(workers)
    unfinished = max((r for r in before if r.info.status == "RUNNING"),
                     key=lambda r: _tokens(client, r))
    trial_dir = storage / "killed" / f"trial_{unfinished.data.tags['tuner.trial_id']}"
    _refused_with_no_whole_checkpoint(trial_dir, uri, tmp_path)
    _lose_named_checkpoint(trial_dir)
    # A driver killed inside a trial's end leaves its status tag written and its run RUNNING.
    client.set_tag(unfinished.info.run_id, "tuner.status", "completed")
    _cut_short_as_tune_copies_it(storage / "killed")

    proc = run_tuner(["search", "--resume", "--name", "killed", "--storage", str(storage)],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "was part-written (its driver was killed while Tune copied it)" in " ".join(
        (proc.stdout + proc.stderr).split())
    assert "Traceback" not in proc.stdout + proc.stderr
    client, parent, after = mlflow_runs(uri, "killed")
    assert parent.info.status == "FINISHED"
    assert len(after) == 6 and len({r.data.tags["tuner.trial_id"] for r in after}) == 6
    assert {r.info.status for r in after} == {"FINISHED"}
    assert {r.data.tags["tuner.status"] for r in after} == {"completed"}
    assert set(finished_before) <= {r.info.run_id for r in after}  # the same runs, not new ones
    # TPE went on where it was: a new one, seeded alike, would suggest the first trial again
    assert len(before) < 6 and len({r.data.params["lr_max"] for r in after}) == 6
    frame = proc.stderr[proc.stderr.index("study killed  tpe + none"):]
    assert "6 completed" in frame.splitlines()[0] and "interrupted" not in frame
    for run in after:  # its last and its best val_loss, for trials finished before the resume too
        row = rf"^{run.data.tags['tuner.trial_id']} +completed +122,880 +\d\.\d{{4}} +\d\.\d{{4}} "
        assert re.search(row, frame, re.MULTILINE), row
    for run in after:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert steps == [10240 * k for k in range(1, 13)], steps  # no gap, no repeat
        if run.info.run_id in finished_before:  # finished trials are not rerun
            assert run.info.end_time == finished_before[run.info.run_id].info.end_time


def _asha_rungs(state: dict) -> dict[int, set[str]]:
    """Rung (tokens) → the trials ASHA recorded there."""
    return {milestone: set(results) for bracket in state["_brackets"]
            for milestone, results in bracket._rungs}


def _median_results(state: dict) -> dict[str, list[int]]:
    """Trial id → the evaluations (tokens) the median rule recorded for it."""
    return {trial_id: [r["tokens"] for r in results]
            for trial_id, results in state["results"].items()}


def _saved_scheduler(storage: Path) -> Any:
    """What the driver saved of the scheduler's state beside Tune's (StateBackup)."""
    import pickle

    return pickle.loads((storage / "killed" / "scheduler-state.pkl").read_bytes())


@pytest.mark.slow
def test_median_rule_stops_trials_and_keeps_its_state_across_a_resume(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """The median rule stops trials. Tune saves no scheduler state: the driver saves the rule's
    with Tune's and puts it back, so a study resumed after a SIGKILL still judges trials against
    every result recorded before it, and an evaluation trained again is recorded once."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "killed", dataset,
                        hparams={"lr_max": {"loguniform": [1e-4, 0.1]}},
                        budget={"tokens": 122880, "eval_interval": 20},
                        search={"algorithm": "random", "scheduler": "median", "num_samples": 6,
                                "median": {"grace_period": 20480}})
    storage = tmp_path / "ray"
    _run_then_sigkill(space, uri, storage, tmp_path, lambda runs, tokens: sum(
        r.info.status == "FINISHED" for r in runs) >= 2)
    before = _median_results(_saved_scheduler(storage))
    assert any(before.values())
    proc = run_tuner(["search", "--resume", "--name", "killed", "--storage", str(storage)],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = _median_results(_saved_scheduler(storage))
    assert all(after[trial][:len(times)] == times for trial, times in before.items())
    assert all(times == sorted(set(times)) for times in after.values()), after
    _, parent, children = mlflow_runs(uri, "killed")
    assert parent.data.tags["tuner.scheduler"] == "median" and len(children) == 6
    _assert_stopped_by(uri, children, "the median rule", budget=122880)


@pytest.mark.slow
def test_a_trial_stopped_just_before_the_kill_is_stopped_again(tmp_path: Path, dataset: Path,
                                                               mlflow_store_template: Path) -> None:
    """A driver killed between ASHA stopping a trial and Tune's next save resumes the trial from
    the checkpoint that save names, the one before its latest: it trains that evaluation again and
    ASHA stops it again, rather than training on from the latest to the end. Tune saves no
    scheduler state: the driver saves ASHA's with Tune's and puts it back, so the resumed study
    judges trials against every rung result recorded before the kill."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "killed", dataset,
                        hparams={"lr_max": {"loguniform": [1e-4, 1e-2]}},
                        budget={"tokens": 122880, "eval_interval": 20},
                        search={"algorithm": "random", "scheduler": "asha", "num_samples": 6,
                                "max_concurrent": 1,
                                "asha": {"grace_period": 20480, "reduction_factor": 2}})
    storage = tmp_path / "ray"
    _run_then_sigkill(space, uri, storage, tmp_path, lambda runs, tokens: any(
        r.data.tags.get("tuner.status") == "stopped" for r in runs))
    _, _, before = mlflow_runs(uri, "killed")
    stopped = {r.info.run_id: r for r in before if r.data.tags.get("tuner.status") == "stopped"}
    rungs = _asha_rungs(_saved_scheduler(storage))
    assert any(rungs.values())
    proc = run_tuner(["search", "--resume", "--name", "killed", "--storage", str(storage)],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rungs_after = _asha_rungs(_saved_scheduler(storage))
    assert all(rungs[rung] <= rungs_after[rung] for rung in rungs), (rungs, rungs_after)
    _, _, after = mlflow_runs(uri, "killed")
    for run in (r for r in after if r.info.run_id in stopped):
        assert run.data.tags["tuner.status"] == "stopped", run.data.tags.get("tuner.status_detail")
        assert run.data.tags["tuner.status_detail"] == stopped[
            run.info.run_id].data.tags["tuner.status_detail"]
    # (a trial the killed driver started after Tune's last save left a folder outside the study)
    _, parent, _ = mlflow_runs(uri, "killed")
    best = parent.data.tags["tuner.best_trial_id"]
    kept = {r.data.tags["tuner.trial_id"]: len(list((storage / "killed").glob(
        f"trial_{r.data.tags['tuner.trial_id']}/checkpoint_*"))) for r in after}
    assert kept == {trial_id: int(trial_id == best) for trial_id in kept}  # the best's latest


def test_the_median_rule_keeps_what_it_put_back_until_its_first_result(tmp_path: Path) -> None:
    """Tune saves its state every few seconds, and a resumed study's first result may come
    minutes later: a save in between keeps the results put back. The first result then keys
    them to the resumed study's trial objects, which are new ones."""
    import pickle

    from tuner.search.median_rule import ResumableMedianStoppingRule

    class Trial:
        status = "RUNNING"

        def __init__(self, trial_id: str) -> None:
            self.trial_id = trial_id

    class Controller:
        def __init__(self, trials: list[Trial]) -> None:
            self.trials = trials

        def get_trials(self) -> list[Trial]:
            return self.trials

        def get_live_trials(self) -> list[Trial]:
            return self.trials

    def rule() -> ResumableMedianStoppingRule:
        return ResumableMedianStoppingRule(metric="val_loss", mode="min", time_attr="tokens",
                                           grace_period=10)

    def saved(median: ResumableMedianStoppingRule, name: str) -> dict[str, list[int]]:
        median.save(str(tmp_path / name))
        state = pickle.loads((tmp_path / name).read_bytes())
        return {trial: [r["tokens"] for r in results]
                for trial, results in state["results"].items()}

    first, second = Trial("a"), Trial("b")
    before = rule()
    for tokens in (10, 20):
        for trial in (first, second):
            before.on_trial_result(Controller([first, second]), trial,
                                   {"tokens": tokens, "val_loss": 3.0})
    assert saved(before, "killed.pkl") == {"a": [10, 20], "b": [10, 20]}
    resumed = rule()
    resumed.restore(str(tmp_path / "killed.pkl"))
    assert saved(resumed, "again.pkl") == {"a": [10, 20], "b": [10, 20]}
    again = Trial("b")  # the resumed study's object for trial b, trained again from 20 tokens
    resumed.on_trial_result(Controller([Trial("a"), again]), again,
                            {"tokens": 20, "val_loss": 2.5})
    assert saved(resumed, "after.pkl") == {"a": [10, 20], "b": [10, 20]}
    assert [r["val_loss"] for r in resumed._results[again]] == [3.0, 2.5]


@pytest.mark.slow
def test_pbt_study_killed_and_resumed_logs_no_evaluation_twice(tmp_path: Path, dataset: Path,
                                                               mlflow_store_template: Path) -> None:
    """A PBT study whose driver is killed with SIGKILL resumes from Tune's last snapshot, which
    lags what MLflow holds: the evaluations trained again are not logged a second time. A trial
    run the kill left bare (killed just after making it) gets its params and artifacts."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "killed", dataset,
                        hparams={"lr_max": {"loguniform": [1e-3, 1e-2]}},
                        budget={"tokens": 122880, "eval_interval": 5},
                        search={"scheduler": "pbt", "num_samples": 2,
                                "pbt": {"perturbation_interval": 20480}})
    storage = tmp_path / "ray"
    _run_then_sigkill(space, uri, storage, tmp_path, lambda runs, tokens: min(
        tokens.values(), default=0) >= 40960 and len(runs) == 2)
    client, _, (bare, *before) = mlflow_runs(uri, "killed")
    logged = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "val_loss"))
              for r in before}
    keep = ("mlflow.parentRunId", "tuner.study", "tuner.role", "tuner.trial_id", "tuner.status")
    client.create_run(bare.info.experiment_id, run_name=bare.info.run_name,
                      tags={k: bare.data.tags[k] for k in keep})
    client.delete_run(bare.info.run_id)
    _, runs = resume_to_the_end("killed", storage, tmp_path, uri, completed=2)
    remade = next(r for r in runs if r.data.tags["tuner.trial_id"] == bare.data.tags[
        "tuner.trial_id"])
    def unperturbed(params: dict[str, str]) -> dict[str, str]:
        # PBT may have changed α_max, and with it α_min (0.1·α_max by default)
        return {k: v for k, v in params.items() if k not in ("lr_max", "lr_min")}

    assert "lr_max" in remade.data.params and remade.data.tags["tuner.searched"] == "lr_max"
    assert unperturbed(remade.data.params) == unperturbed(bare.data.params)
    assert {a.path for a in client.list_artifacts(remade.info.run_id)} >= {
        "searched.json", "trial_config.json"}
    for run in before:
        history = client.get_metric_history(run.info.run_id, "val_loss")
        pairs = Counter((m.step, m.value) for m in history)
        assert len(history) > logged[run.info.run_id]
        assert max(pairs.values()) == 1, [pair for pair, n in pairs.items() if n > 1]
    _, parent, runs = mlflow_runs(uri, "killed")
    _assert_tokens_counted_once(client, parent, runs, interval=2560)


@pytest.mark.slow
def test_sigterm_stops_the_study_as_ctrl_c_does(tmp_path: Path, dataset: Path,
                                                mlflow_store_template: Path) -> None:
    """`kill` and `docker stop` send SIGTERM: the driver stops the study as Ctrl-C does (exit
    130, runs ended, the --resume command printed, under `uv run` as uv started it) rather than
    dying in Ray's handler; a SIGINT right after is the same stop again (`uv run` passes on a
    signal sent to its process group), not a second one."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "termed", dataset, budget={"tokens": 122880},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 3})
    storage = tmp_path / "ray"
    driver = start_search(space, uri, storage, tmp_path,
                          env={**ENV, "UV_RUN_RECURSION_DEPTH": "1"})  # as `uv run` starts it
    try:
        _wait_until(uri, driver, lambda runs, tokens: max(tokens.values(), default=0) >= 20480,
                    study="termed")
    finally:
        driver.send_signal(signal.SIGTERM)  # and at once, as `uv run` passes it on
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, out + err
    assert "SIGTERM received" not in err  # Ray's stack dump
    assert (f"continue it with: uv run tuner search --resume --name termed --storage {storage}"
            in out)
    _, parent, before = mlflow_runs(uri, "termed")
    assert parent.info.status == "KILLED" and before
    assert "RUNNING" not in {r.info.status for r in before}
    assert "interrupted" in {r.data.tags["tuner.status"] for r in before}
    halfway = [r for r in before if r.data.tags["tuner.status"] == "interrupted"]
    assert parent.data.tags["tuner.best_run_id"] in {r.info.run_id for r in halfway}
    assert {r.data.tags["mlflow.note.content"].split("**")[1] for r in halfway} == {"interrupted"}
    assert parent.data.tags["mlflow.note.content"].startswith(
        f"**Best: trial {parent.data.tags['tuner.best_trial_id']}**")
    assert not [r for r in halfway if "tuner.checkpoint_sha256" in r.data.tags]  # not final
    assert f"best trial so far {parent.data.tags['tuner.best_trial_id']}: " in out, out
    assert "reproduce it as far as it trained with:" in out  # not its result at the end
    assert f"  uv run tuner replay {parent.data.tags['tuner.best_run_id']} " in out

    proc = run_tuner(["search", "--resume", "--name", "termed", "--storage", str(storage)],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, parent, after = mlflow_runs(uri, "termed")
    assert parent.info.status == "FINISHED" and len(after) == 3
    assert {r.data.tags["tuner.status"] for r in after} == {"completed"}
    assert {r.data.tags["mlflow.note.content"].split(" (")[0] for r in after} == {"**completed"}
    assert {r.info.run_id for r in before} <= {r.info.run_id for r in after}


class Terminal:
    """A pseudo-terminal the driver runs in as its session's controlling terminal, its output
    read (or it would block once the terminal's buffer is full) until `close`, which hangs it
    up as closing a terminal window or an SSH session does."""

    def __init__(self) -> None:
        import threading

        self.master, self.slave = os.openpty()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def controlling(self) -> None:
        """preexec_fn: make the terminal the controlling one of the new session."""
        import fcntl
        import termios

        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def _read(self) -> None:
        import select

        while not self._stop.is_set():
            if select.select([self.master], [], [], 0.1)[0]:
                with contextlib.suppress(OSError):
                    os.read(self.master, 65536)
        os.close(self.master)

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._reader.join()


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGTERM to the group", "SIGHUP to the group",
                                  "Ctrl-C in its terminal", "SIGHUP to the driver",
                                  "its terminal closed"])
def test_every_stop_ends_the_study_at_once_and_resumes(tmp_path: Path, dataset: Path,
                                                       mlflow_store_template: Path,
                                                       stop: str) -> None:
    """Started in a session of its own (`setsid`, as a batch job or a terminal's shell starts
    it), the driver takes SIGTERM and SIGHUP, to itself or its whole process group, and a
    closed terminal, as it takes Ctrl-C: its trials' runs end interrupted, the parent KILLED, it
    exits 130 printing the --resume command, and no Ray process outlives it. Ray's own processes
    run in sessions of their own: a signal to the driver's group stopped them first, and the
    driver waited a minute for them and exited 1 with its runs RUNNING; a closed terminal
    left the command exiting 129, its runs RUNNING."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "stopped", dataset, budget={"tokens": 163840},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 2})
    storage = tmp_path / "ray"
    terminal = Terminal() if stop == "its terminal closed" else None
    out_to = {"stdin": terminal.slave, "stdout": terminal.slave, "stderr": terminal.slave,
              "preexec_fn": terminal.controlling} if terminal else \
        {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    driver = subprocess.Popen([str(TUNER), "search", "--space", str(space), "--tracking-uri", uri,
                               "--storage", str(storage)], cwd=tmp_path, env=ENV, text=True,
                              start_new_session=True, **out_to)
    try:
        if terminal:
            os.close(terminal.slave)
        _wait_until(uri, driver, lambda runs, tokens: max(tokens.values(), default=0) >= 10240,
                    study="stopped")
        ray_processes = [pid for pid, _ in _descendants(driver.pid)]
        if terminal:
            terminal.close()
        else:
            signum = getattr(signal, stop.split()[0].replace("Ctrl-C", "SIGINT"))
            if stop.endswith("driver"):
                driver.send_signal(signum)
            else:  # as Ctrl-C in a terminal reaches its whole foreground group
                os.killpg(driver.pid, signum)
        try:  # the driver that waited for Ray's stopped servers took about a minute
            out, _ = driver.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{stop}: the driver still ran 45 s later")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        if terminal:
            terminal.close()
    assert driver.returncode == 130
    if not terminal:  # a closed terminal shows nothing
        assert f"continue it with: tuner search --resume --name stopped --storage {storage}" \
            in out, out
    _wait_exited(ray_processes)
    _, parent, runs = mlflow_runs(uri, "stopped")
    assert parent.info.status == "KILLED"
    assert [(r.info.status, r.data.tags["tuner.status"]) for r in runs] == \
        [("KILLED", "interrupted")] * 2
    if stop == "SIGTERM to the group":
        resume_to_the_end("stopped", storage, tmp_path, uri, completed=2)


@pytest.mark.slow
def test_tracking_server_lost_mid_study_stops_it(tmp_path: Path, dataset: Path) -> None:
    """The `mlflow server` dies mid-study: once MLflow's retries are spent (none here) the study
    stops, saying which store failed and how to continue, instead of hanging on every record;
    with the server back, --resume finishes it in the same runs."""
    backend, artifacts = f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts"
    space = write_space(tmp_path, "lost", dataset, budget={"tokens": 61440},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 3})
    storage = tmp_path / "ray"
    env = {**ENV, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    try:
        with mlflow_server(backend, artifacts) as uri:
            driver = start_search(space, uri, storage, tmp_path, env=env)
            _wait_until(uri, driver, lambda runs, tokens: max(tokens.values(), default=0) > 0,
                        study="lost")
        out, err = driver.communicate(timeout=300)
        assert driver.returncode == 1, out + err
        said = " ".join(out.split())
        assert f"error: tracking store {uri} failed: " in said and "; the study stopped" in said
        assert ("once the store answers again, continue it with: tuner search --resume --name "
                f"lost --storage {storage}") in said

        with mlflow_server(backend, artifacts, port=int(uri.rsplit(":", 1)[1])):
            proc, _ = resume_to_the_end("lost", storage, tmp_path, uri, completed=3, env=env)
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    assert "View run" not in proc.stdout  # MLflow's line per ended run: the summary names it


@pytest.mark.slow
def test_tracking_failure_as_a_trial_ends_stops_the_study(tmp_path: Path, dataset: Path,
                                                          mlflow_store_template: Path) -> None:
    """Tune catches the errors of a trial's end (and would retry the finished trial): a store that
    fails there still stops the study, and once it is back --resume finishes it in the same runs."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "ends", dataset, budget={"tokens": 122880},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 3,
                                "max_concurrent": 1})
    storage, artifacts, aside = tmp_path / "ray", tmp_path / "mlruns", tmp_path / "mlruns.aside"
    driver = start_search(space, uri, storage, tmp_path)
    _wait_until(uri, driver, lambda runs, tokens: max(tokens.values(), default=0) > 0,
                study="ends")
    artifacts.rename(aside)
    artifacts.write_text("")  # a file: the first trial's sample.txt, at its end, cannot be written
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 1, out + err
    said = " ".join(out.split())
    assert f"error: tracking store {uri} failed: " in said and "; the study stopped" in said

    artifacts.unlink()
    aside.rename(artifacts)
    _, runs = resume_to_the_end("ends", storage, tmp_path, uri, completed=3)
    assert not [r for r in runs if "tuner.retries" in r.data.tags]  # none was run twice


@pytest.mark.slow
def test_a_second_driver_of_a_running_study_is_refused(tmp_path: Path, dataset: Path,
                                                       mlflow_store_template: Path) -> None:
    """`--resume` while the study's driver still runs would run its trials twice into the same
    runs: exit 2 before its Ray starts, naming the running driver, and the study goes on
    untouched."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "busy", dataset, budget={"tokens": 983040},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 4})
    storage = tmp_path / "ray"
    driver = start_search(space, uri, storage, tmp_path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        _wait_until(uri, driver, lambda runs, tokens: any(tokens.values()), study="busy")
        # where the second driver's Ray would start (short: Ray's sockets live in it)
        second_ray = Path(tempfile.mkdtemp(prefix="ray-"))
        second = run_tuner(["search", "--resume", "--name", "busy", "--storage", str(storage)],
                           cwd=tmp_path, env={**ENV, "RAY_TMPDIR": str(second_ray)})
        assert driver.poll() is None
        _, parent, runs = mlflow_runs(uri, "busy")
    finally:
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=120)
    assert second.returncode == 2, second.stdout + second.stderr
    assert (f"error: study 'busy' is running: another `tuner search` (pid {driver.pid} on "
            f"{socket.gethostname()}) drives it") in " ".join(second.stderr.split())
    assert not list(second_ray.iterdir())
    second_ray.rmdir()
    assert parent.info.status == "RUNNING"
    trials = [r.data.tags["tuner.trial_id"] for r in runs]
    assert len(trials) == len(set(trials)) <= 4


@pytest.mark.slow
def test_stop_before_the_first_trial_then_resume(tmp_path: Path, dataset: Path,
                                                 mlflow_store_template: Path) -> None:
    """SIGTERM while the study is set up, before Tune listens: held until Tune takes it, so the
    study stops resumable; its resume (Tune cannot restore a state without trials) starts it."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "early", dataset,
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 3})
    storage = tmp_path / "ray"
    driver = start_search(space, uri, storage, tmp_path)
    deadline = time.monotonic() + 120
    while not (storage / "early").exists() and driver.poll() is None:  # the study's state, saved
        assert time.monotonic() < deadline
        time.sleep(0.005)
    driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, out + err
    assert "study early interrupted: no trial finished" in out
    assert f"continue it with: tuner search --resume --name early --storage {storage}" in out
    assert not list((storage / "early").glob("trial_*"))

    resume_to_the_end("early", storage, tmp_path, uri, completed=3)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_ray_starts_aborts_and_leaves_no_ray_process(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path, stop: signal.Signals) -> None:
    """Ctrl-C while the local Ray starts is held until Ray is up (a start cut short left Ray's
    agents running for ever); nothing is saved yet, so the command then aborts. A SIGTERM there
    meets Ray's own handler, which stops what Ray started: the command aborts alike (it exited
    15, saying nothing)."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "cut", dataset)
    storage = tmp_path / "ray"
    with open(tmp_path / "stderr.txt", "w") as err:
        driver = start_search(space, uri, storage, tmp_path, stdout=subprocess.DEVNULL,
                              stderr=err)
        deadline = time.monotonic() + 120
        ray_processes: set[int] = set()
        while not any("raylet" in cmd for _, cmd in _descendants(driver.pid)):
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        driver.send_signal(stop)
        while driver.poll() is None:
            ray_processes |= {pid for pid, _ in _descendants(driver.pid)}
            time.sleep(0.01)
    said = (tmp_path / "stderr.txt").read_text()
    assert driver.returncode == 130 and said.splitlines()[-1] == "aborted", said
    assert not storage.exists()
    _wait_exited(sorted(ray_processes))


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _listen_addresses(pids: set[int]) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* spells them) of the TCP sockets `pids` listen
    on: 127.0.0.1, ::ffff:127.0.0.1 and ::1 are LOOPBACK."""
    sockets = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        sockets |= {link[len("socket:["):-1] for link in links if link.startswith("socket:[")}
    addresses = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in sockets:  # state 0A is LISTEN
                addresses.add(fields[1].rsplit(":", 1)[0])
    return addresses


def _run_then_sigkill(space: Path, uri: str, storage: Path, cwd: Path, ready: Any) -> None:
    """Run study `space`, SIGKILL its driver once `ready(runs, tokens)` holds (see `_wait_until`),
    and wait for its trial processes, which checkpoint a second or two longer, to exit."""
    driver = start_search(space, uri, storage, cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        _wait_until(uri, driver, ready)
    finally:
        trial_processes = [pid for pid, cmd in _descendants(driver.pid)
                           if cmd.startswith("ray::ImplicitFunc")]
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    _wait_exited(trial_processes)


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


def _lose_named_checkpoint(trial_dir: Path) -> None:
    """What a driver killed between Tune registering a checkpoint and saving its state leaves:
    the checkpoint the state names deleted (`num_to_keep`), the next one kept. Each folder moves
    up one number, so whichever one the state names is lost and its content comes next; the
    first number is left with a copy of its content whose bytes are damaged (a disk's fault)."""
    folders = sorted(trial_dir.glob("checkpoint_*"), reverse=True)
    for folder in folders:
        folder.rename(trial_dir / f"checkpoint_{int(folder.name.split('_')[1]) + 1:06d}")
    first = folders[-1]
    shutil.copytree(min(trial_dir.glob("checkpoint_*")), first)
    _damage_bytes(first / "checkpoint.pt")


def _damage_bytes(path: Path) -> None:
    """Flip 64 bytes in the middle of a checkpoint (its tensors): it still opens as a zip."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def _refused_with_no_whole_checkpoint(trial_dir: Path, uri: str, cwd: Path) -> None:
    """With every checkpoint of an unfinished trial damaged, --resume names the one Tune's state
    names, exits 2, and changes nothing (nor starts Ray); the files are put back after."""
    study = trial_dir.parent

    def files() -> dict[Path, bytes]:  # but the driver's lock, which names the last to take it
        return {path: path.read_bytes() for path in study.rglob("*")
                if path.is_file() and path.name != "driver.lock"}

    before, runs_before = files(), mlflow_runs(uri, study.name)[2]
    for checkpoint in trial_dir.glob("checkpoint_*/checkpoint.pt"):
        _damage_bytes(checkpoint)
    damaged = files()
    proc = run_tuner(["search", "--resume", "--name", study.name, "--storage", str(study.parent)],
                     cwd=cwd, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message, trial_id = " ".join(proc.stderr.split()), trial_dir.name.removeprefix("trial_")
    # the checkpoint it names may also be gone: deleted by Tune just before the kill (recovery.py)
    assert re.search(rf"{trial_dir}/checkpoint_\d{{6}}/checkpoint.pt: (is damaged: (its entry \S+ "
                     rf"fails its checksum|an entry's header is unreadable \(\w+\))|checkpoint not "
                     rf"found)\. Trial "
                     rf"{trial_id} would resume from it, .* put back a "
                     rf"whole copy, or start a new study with another --name \(--warm-start "
                     rf"{study.name} builds on this one's finished trials\)", message), message
    assert "Traceback" not in proc.stderr and "ray" not in proc.stdout.lower()
    assert files() == damaged
    assert [(r.info.run_id, r.info.status) for r in mlflow_runs(uri, study.name)[2]] == [
        (r.info.run_id, r.info.status) for r in runs_before]
    for path, data in before.items():
        path.write_bytes(data)


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


@pytest.mark.slow
def test_study_where_no_trial_trains_exits_1(tmp_path: Path, dataset: Path,
                                             mlflow_store_template: Path) -> None:
    """Every trial diverges: the study is recorded, but the command fails (nothing to replay)."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "blowup", dataset, hparams={"lr_max": 50.0},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 2})
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri, "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no trial reached a finite validation loss without diverging" in proc.stdout
    _, parent, children = mlflow_runs(uri, "blowup")
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["tuner.status"] for r in children} == {"diverged"}
    # resumed, the diverged losses (inf, stored as the largest float) are still no best
    proc = run_tuner(["search", "--resume", "--name", "blowup", "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _, parent, _ = mlflow_runs(uri, "blowup")
    assert "tuner.best_run_id" not in parent.data.tags and "study/best_val_loss" not in (
        parent.data.metrics)
    assert parent.data.tags["mlflow.note.content"].startswith("No trial reached a finite")


@pytest.fixture(scope="module")
def ties_study(tmp_path_factory: pytest.TempPathFactory, dataset: Path,
               mlflow_store_template: Path) -> dict[str, Any]:
    """A finished study where nothing is searched, so its 3 trials train alike and tie, two at a
    time; on a data folder of its own."""
    folder = tmp_path_factory.mktemp("ties")
    data = folder / "data"
    shutil.copytree(dataset, data)
    uri = fresh_store(folder, mlflow_store_template)
    space = write_space(folder, "ties", data,
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 3})
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri, "--storage",
                      str(folder / "ray")], cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"proc": proc, "uri": uri, "folder": folder, "data": data}


@pytest.mark.slow
def test_trials_that_tie_name_the_earliest_as_best(ties_study: dict[str, Any]) -> None:
    """The parent's tag, the summary and `tuner best` all name the earliest trial, and no empty
    values print."""
    proc, uri = ties_study["proc"], ties_study["uri"]
    _, parent, children = mlflow_runs(uri, "ties")
    assert len(children) == 3 and len({r.data.metrics["best_val_loss"] for r in children}) == 1
    earliest = min(children, key=lambda r: r.info.start_time)
    assert parent.data.tags["tuner.best_run_id"] == earliest.info.run_id
    trial = earliest.data.tags["tuner.trial_id"]
    assert f"best trial {trial}: MLflow run {earliest.info.run_id}\n" in proc.stdout
    assert re.search(r"perplexity [0-9.]+\nreproduce it with:", proc.stdout)
    assert re.search(rf"best val_loss [0-9.]+ \(trial {trial}\)\n", proc.stderr), proc.stderr
    best = run_tuner(["best", "--study", "ties", "--tracking-uri", uri], cwd=ties_study["folder"])
    assert best.returncode == 0
    assert re.findall(r"[0-9a-f]{32}", best.stdout)[0] == earliest.info.run_id
    assert "()" not in proc.stdout + proc.stderr + best.stdout


@pytest.mark.slow
def test_resume_on_a_changed_dataset_fails_before_ray(ties_study: dict[str, Any]) -> None:
    """The study's data folder was prepared again with other inputs: its trials would go on
    with other data under the recorded sha256, so --resume refuses, naming the folder."""
    data, folder = ties_study["data"], ties_study["folder"]
    meta = (data / "meta.json").read_text()
    (data / "meta.json").write_text(json.dumps({**json.loads(meta), "valid_fraction": 0.2}))
    try:
        proc = run_tuner(["search", "--resume", "--name", "ties", "--storage",
                          str(folder / "ray")], cwd=folder)
    finally:
        (data / "meta.json").write_text(meta)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{data}: the dataset changed since study 'ties' started" in " ".join(
        proc.stderr.split())
    _, parent, _ = mlflow_runs(ties_study["uri"], "ties")
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_study_of_one_trial_at_a_time_repeats_exactly(tmp_path: Path, dataset: Path,
                                                       mlflow_store_template: Path) -> None:
    """Trials run one at a time reach ASHA and TPE in one order: the same study twice gives the
    same trials, stops and losses."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    outcomes = []
    for name in ("first", "second"):
        space = write_space(tmp_path, name, dataset,
                            hparams={"lr_max": {"loguniform": [1e-4, 3e-2]}},
                            search={"algorithm": "tpe", "scheduler": "asha", "num_samples": 6,
                                    "max_concurrent": 1, "startup_trials": 3,
                                    "asha": {"grace_period": 5120, "reduction_factor": 2}})
        proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri,
                          "--storage", str(tmp_path / "ray")], cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        client, _, children = mlflow_runs(uri, name)
        outcomes.append([(run.data.params["lr_max"], run.data.tags["tuner.status"],
                          [(m.step, m.value) for m in sorted(
                              client.get_metric_history(run.info.run_id, "val_loss"),
                              key=lambda m: m.step)])
                         for run in sorted(children, key=lambda r: r.info.start_time)])
    assert outcomes[0] == outcomes[1]
    assert {status for _, status, _ in outcomes[0]} == {"completed", "stopped"}


@pytest.mark.parametrize("started", [[], ["uv", "run"]], ids=["tuner", "uv run tuner"])
def test_summary_commands_survive_spaces_and_brackets_in_paths(
        started: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The printed `tuner replay` is one shell word per argument, under `uv run` when uv started
    the study, and Rich markup is not applied to a store's path (`[/x]` raised, `[exp]`
    vanished)."""
    import io
    import shlex

    from rich.console import Console

    from tuner.search.console import Summary, print_summary

    if started:
        monkeypatch.setenv("UV_RUN_RECURSION_DEPTH", "1")
    uri = "sqlite:////home/u/My Projects/[exp]/[/x]/mlflow.db"
    out = io.StringIO()
    print_summary(Console(file=out, width=300), Summary(
        "s", "p" * 32, {"completed": 1}, best_trial="t1", best_run_id="r" * 32,
        best_val_loss=1.0, tracking_uri=uri))
    text = out.getvalue()
    assert f"MLflow parent run {'p' * 32} ({uri})" in text
    command = next(line for line in text.splitlines() if "tuner replay" in line)
    assert shlex.split(command) == [*started, "tuner", "replay", "r" * 32, "--tracking-uri", uri]


def test_repair_puts_back_a_lost_checkpoint_from_the_next_whole_one(tmp_path: Path) -> None:
    """A checkpoint Tune's state names but `num_to_keep` deleted, or one cut short, comes back as
    the next whole one."""
    import zipfile

    from tuner.search.recovery import repair

    def write(index: int, content: bytes) -> Path:
        (tmp_path / f"checkpoint_{index:06d}").mkdir(exist_ok=True)
        with zipfile.ZipFile(tmp_path / f"checkpoint_{index:06d}" / "checkpoint.pt", "w") as z:
            z.writestr("archive/data.pkl", content)
        return tmp_path / f"checkpoint_{index:06d}" / "checkpoint.pt"

    def content(index: int) -> bytes:
        with zipfile.ZipFile(tmp_path / f"checkpoint_{index:06d}" / "checkpoint.pt") as z:
            return z.read("archive/data.pkl")

    write(3, b"fourth report")
    write(4, b"fifth, never registered")
    named = tmp_path / "checkpoint_000002"
    assert repair(named)
    assert content(2) == b"fourth report"
    assert not repair(named)  # whole: left alone
    assert not repair(tmp_path / "checkpoint_000009")  # nothing after it
    assert not (tmp_path / "checkpoint_000009").exists()
    # a kill inside Tune's deletion leaves a folder without its checkpoint: gone as well, and no
    # folder without one is taken for the next; nor one cut short
    (tmp_path / "checkpoint_000000").mkdir()
    (tmp_path / "checkpoint_000001").mkdir()
    cut = write(2, b"third report")
    cut.write_bytes(cut.read_bytes()[:-10])
    assert repair(tmp_path / "checkpoint_000000")
    assert content(0) == b"fourth report"
    assert repair(tmp_path / "checkpoint_000002")  # cut short: replaced
    assert content(2) == b"fourth report"
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        f"checkpoint_{index:06d}" for index in range(5)]


def test_resume_puts_back_tunes_state_kept_whole(tmp_path: Path) -> None:
    """Tune's state as a killed driver may leave it (a file cut short, or whole files from two
    saves, or a newer session's files) is replaced by the copy kept whole; a state equal to the
    copy is left alone; a file cut short with no copy kept is a UserError naming it."""
    import pickle
    import zipfile

    from tuner.errors import UserError
    from tuner.search.tune_state import BACKUP, restore_whole_state

    old, new = pickle.dumps({"trials": 1}), pickle.dumps({"trials": 2})
    kept = {"experiment_state-2026-01-01_00-00-00.json": b'{"trial_data": [1, 2]}',
            "searcher-state-2026-01-01_00-00-00.pkl": new}
    with zipfile.ZipFile(tmp_path / BACKUP, "w") as bundle:
        for name, data in kept.items():
            bundle.writestr(name, data)

    def state() -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.name != BACKUP}

    for name, data in kept.items():
        (tmp_path / name).write_bytes(data)
    assert not restore_whole_state(tmp_path) and state() == kept
    (tmp_path / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(old)  # two saves
    (tmp_path / "experiment_state-2026-01-02_00-00-00.json").write_text("{}")  # a later session
    assert restore_whole_state(tmp_path) and state() == kept
    (tmp_path / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(new[:5])  # cut short
    assert restore_whole_state(tmp_path) and state() == kept

    (tmp_path / BACKUP).unlink()
    assert not restore_whole_state(tmp_path) and state() == kept  # whole: Tune reads it
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_bytes(b'{"trial_da')
    with pytest.raises(UserError, match=r"experiment_state-2026-01-01_00-00-00\.json: cut short"):
        restore_whole_state(tmp_path)


@pytest.mark.slow
def test_study_on_mlflow_server_and_ray_cluster(tmp_path: Path, dataset: Path,
                                                mlflow_store_template: Path) -> None:
    """`mlflow server` and `ray start --head`, both on 127.0.0.1: `--tracking-uri http://…` and
    `--address` work as the embedded defaults do (one study for both: each costs a start-up). A
    password in the URI reaches neither the output nor anything MLflow stores."""
    backend = fresh_store(tmp_path / "server", mlflow_store_template)
    space = write_space(tmp_path, "served", dataset,
                        hparams={"lr_max": {"loguniform": [1e-3, 1e-2]}},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 2},
                        tracking={"log_checkpoints": "best"})
    try:
        with mlflow_server(backend, tmp_path / "server" / "artifacts") as uri, ray_head() as head:
            secret_uri = uri.replace("http://", "http://tuner:s3cret-pw@")
            proc = run_tuner(["search", "--space", str(space), "--tracking-uri", secret_uri,
                              "--storage", str(tmp_path / "ray"), "--address", head.address],
                             cwd=tmp_path, env={**ENV, **head.env})
            assert proc.returncode == 0, proc.stdout + proc.stderr
            client, parent, children = mlflow_runs(uri, "served")
            best = parent.data.tags["tuner.best_run_id"]
            checkpoints = {r.info.run_id: [a.path for a in client.list_artifacts(
                r.info.run_id, "checkpoint")] for r in children}
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert {r.data.tags["tuner.status"] for r in children} == {"completed"}
    assert checkpoints.pop(best) == ["checkpoint/checkpoint.pt"]
    assert list(checkpoints.values()) == [[]]  # log_checkpoints: best
    assert not (tmp_path / "mlruns").exists()  # the artifacts went to the server
    assert "tuner:***@127.0.0.1" in proc.stdout and "s3cret-pw" not in proc.stdout + proc.stderr
    stored = [p for p in (tmp_path / "server").rglob("*") if p.is_file()]  # runs and artifacts
    assert len(stored) > 5 and not [p for p in stored if b"s3cret-pw" in p.read_bytes()]


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


# Bad input fails before Ray starts ----------------------------------------------------------


def search_refused(tmp_path: Path, space: Path, uri: str) -> str:
    """`tuner search` of `space` recording to `uri`: exit 2 before Ray starts; stderr on a line."""
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri, "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert not (tmp_path / "ray").exists()
    return " ".join(proc.stderr.split())


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


def test_a_study_name_taken_in_another_experiment_fails_before_ray(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """The read commands find a study by name alone: a second study of one name, recorded in
    another experiment, is refused before anything starts."""
    from mlflow import MlflowClient

    uri = fresh_store(tmp_path, mlflow_store_template)
    client = MlflowClient(tracking_uri=uri)
    first = client.create_experiment("first", artifact_location=(tmp_path / "a").as_uri())
    client.create_run(first, tags={"tuner.study": "twice", "tuner.role": "study"})
    space = write_space(tmp_path, "twice", dataset, tracking={"experiment": "second"})
    message = search_refused(tmp_path, space, uri)
    assert "MLflow experiment 'first' at" in message and "pick another --name" in message
    assert client.get_experiment_by_name("second") is None


def test_a_new_study_on_a_taken_optuna_study_fails_before_ray(tmp_path: Path, dataset: Path,
                                                              mlflow_store_template: Path) -> None:
    """search.storage already holds an Optuna study of the name (an earlier study's): the new
    one would go on from its trials, so it is refused, naming the storage."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="taken", storage=storage).add_trial(
        optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "taken", dataset,
                        hparams={"lr_max": {"loguniform": [1e-4, 1e-2]}},
                        search={"algorithm": "tpe", "storage": storage})
    message = search_refused(tmp_path, space, uri)
    assert f"search.storage {storage} already holds an Optuna study 'taken'" in message
    assert len(optuna.load_study(study_name="taken", storage=storage).trials) == 1


def test_an_optuna_study_left_before_any_trial_is_taken_up_again(tmp_path: Path,
                                                                 dataset: Path) -> None:
    """search.storage holding the study's name with warm-start trials alone (an attempt that
    stopped before its first trial) is no reason to refuse; a missing file is not made."""
    import optuna

    from tuner.errors import UserError
    from tuner.search.algorithms import WARM_START_ATTR, check_storage_is_free
    from tuner.space import load_study

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = load_study(write_space(tmp_path, "again", dataset,
                                   hparams={"lr_max": {"loguniform": [1e-4, 1e-2]}},
                                   search={"algorithm": "tpe", "storage": storage}))
    check_storage_is_free(study)
    assert not (tmp_path / "optuna.db").exists()
    left = optuna.create_study(study_name="again", storage=storage)
    left.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0,
                                             user_attrs={WARM_START_ATTR: True}))
    check_storage_is_free(study)
    left.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=2.0))
    with pytest.raises(UserError, match="already holds an Optuna study 'again'"):
        check_storage_is_free(study)


def test_missing_dataset_fails_before_ray(tmp_path: Path) -> None:
    space = write_space(tmp_path, "nodata", tmp_path / "missing")
    proc = run_tuner(["search", "--space", str(space), "--storage", str(tmp_path / "ray")],
                     cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "missing" in proc.stderr
    assert not (tmp_path / "ray").exists()


def test_drivers_opening_one_new_sqlite_store_together_all_succeed(tmp_path: Path) -> None:
    """MLflow creates a new sqlite store's tables without a lock: drivers starting together on one
    new file used to fail in its migrations (`tuner search` exit 2) but the first."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = "import sys; from tuner.store.connect import connect; connect(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs


def test_the_sqlite_creation_lock_follows_no_planted_link(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock was opened with "w" in the shared temp folder: a symlink planted at its name had
    its target truncated. It lives in the user's private <tmp>/tuner-UID now, which is refused
    when a symlink or not a folder (or another user's: root cannot show that here)."""
    from tuner.errors import UserError
    from tuner.store.connect import connect

    shared = tmp_path / "tmp"
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")

    def key(store: Path) -> str:
        return hashlib.sha256(str(store.resolve()).encode()).hexdigest()[:16]

    (shared / f"tuner-sqlite-{key(tmp_path / 'new.db')}.lock").symlink_to(victim)  # the old name
    connect(f"sqlite:///{tmp_path / 'new.db'}")
    private = shared / f"tuner-{os.getuid()}"
    assert victim.read_text() == "precious" and private.stat().st_mode & 0o777 == 0o700
    (private / f"sqlite-{key(tmp_path / 'two.db')}.lock").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic links"):
        connect(f"sqlite:///{tmp_path / 'two.db'}")
    shutil.rmtree(private)
    (tmp_path / "elsewhere").mkdir()
    for planted, said in ((lambda: private.symlink_to(tmp_path / "elsewhere"), "a symlink"),
                          (lambda: private.write_text("x"), "not a folder")):
        private.unlink(missing_ok=True)
        planted()
        with pytest.raises(UserError, match=f"{private}: {said}, not this user's own folder"):
            connect(f"sqlite:///{tmp_path / 'two.db'}")
    assert victim.read_text() == "precious" and not (tmp_path / "two.db").exists()
    assert not any((tmp_path / "elsewhere").iterdir())


def test_deleted_experiment_fails_before_ray(tmp_path: Path, dataset: Path,
                                             mlflow_store_template: Path) -> None:
    """MLflow keeps a deleted experiment's name and refuses runs in it: said before Ray starts."""
    from mlflow import MlflowClient

    uri = fresh_store(tmp_path, mlflow_store_template)
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("gone"))
    space = write_space(tmp_path, "gone", dataset)
    message = search_refused(tmp_path, space, uri)
    assert f"MLflow experiment 'gone' at {uri} is deleted: restore it" in message


def test_a_server_that_is_not_mlflow_is_named_as_such(tmp_path: Path, dataset: Path) -> None:
    """A tracking URI where some other web server answers: exit 2 saying what answered."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        proc = run_tuner(["search", "--space", str(write_space(tmp_path, "web", dataset)),
                          "--tracking-uri", uri, "--storage", str(tmp_path / "ray")],
                         cwd=tmp_path, timeout=120)
    finally:
        server.shutdown()
    assert proc.returncode == 2
    message = " ".join(proc.stderr.split())
    assert f"tracking server {uri} answered HTTP 501" in message, proc.stderr
    assert "at /health: is it an MLflow tracking server" in message
    assert not (tmp_path / "ray").exists()


def test_unreachable_tracking_store_fails_before_training(tmp_path: Path, dataset: Path) -> None:
    space = write_space(tmp_path, "offline", dataset)
    uri = f"http://127.0.0.1:{free_port()}"
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri, "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path, timeout=120)  # not MLflow's retries
    assert proc.returncode == 2 and uri in proc.stderr
    assert not (tmp_path / "ray").exists()
    space.write_text(space.read_text().replace(f"path: {dataset}", "source: synthetic"))
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri], cwd=tmp_path,
                     timeout=120)
    assert proc.returncode == 2 and uri in proc.stderr
    assert not (tmp_path / ".tuner").exists()  # no corpus prepared for a study that cannot run
    # A study file without tracking.uri goes where MLFLOW_TRACKING_URI points, as MLflow does
    proc = run_tuner(["search", "--space", str(space)], cwd=tmp_path, timeout=120,
                     env={**ENV, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 2 and uri in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
    # A database that refuses: one line at once, not MLflow's retries for a minute and a half
    uri = f"postgresql+psycopg2://tuner:secret@127.0.0.1:{free_port()}/mlflow"
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri], cwd=tmp_path,
                     timeout=120)
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "store postgresql+psycopg2://tuner:***@127.0.0.1:" in said
    assert "Connection refused" in said and "retried" not in said and "secret" not in said
    # One that takes the connection and never answers (libpq alone would wait for ever)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        uri = f"postgresql+psycopg2://tuner:secret@127.0.0.1:{silent.getsockname()[1]}/mlflow"
        proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri], cwd=tmp_path,
                         timeout=120)
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "failed: timeout expired" in said and "secret" not in said


def test_a_sqlite_file_of_another_application_is_refused_untouched(tmp_path: Path,
                                                                    dataset: Path) -> None:
    """MLflow would add its tables to any database it is pointed at (the read commands refuse
    one); an empty file is a new store."""
    import sqlite3

    other = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(other)) as db, db:
        db.execute("CREATE TABLE accounts (id INTEGER)")
    before = other.read_bytes()
    space = write_space(tmp_path, "foreign", dataset)
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", f"sqlite:///{other}",
                      "--storage", str(tmp_path / "ray")], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{other} is another database, not an MLflow store" in " ".join(proc.stderr.split())
    assert other.read_bytes() == before and not (tmp_path / "ray").exists()


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


@pytest.mark.slow
def test_resume_refuses_flags_that_change_the_study(faults_study: dict[str, Any]) -> None:
    """A resumed study keeps its settings: a flag that would change one is refused, not ignored,
    naming each with its value then and now, and nothing is written."""
    folder = faults_study["folder"]
    storage = folder / "ray" / "faults"
    before = {p: p.read_bytes() for p in storage.rglob("*") if p.is_file()}
    proc = run_tuner(["search", "--resume", "--name", "faults", "--num-samples", "20",
                      "--max-concurrent", "2", "--tracking-uri", "sqlite:///other.db",
                      "--storage", str(folder / "ray")], cwd=folder, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f"error: a resumed study keeps the settings it started with (its searcher's state "
            f"depends on them): --num-samples was 8, is 20 now; --tracking-uri was "
            f"\"{faults_study['uri']}\", is \"sqlite:///{folder / 'other.db'}\" now. Retype the "
            "values it started with, or leave the options out; to build on it with other "
            "settings, start a new study with --warm-start faults") in " ".join(proc.stderr.split())
    assert not (folder / "other.db").exists()
    assert {p: p.read_bytes() for p in storage.rglob("*") if p.is_file()} == before


def test_resume_of_unknown_study_fails_naming_those_there(tmp_path: Path, dataset: Path) -> None:
    """A mistyped name is refused with the studies its storage holds; the name defaults to the
    --space file's, as for a new study."""
    import pickle

    from tuner.search.state import STATE_FILE, TUNE_STATE

    storage = tmp_path / "ray"
    for started in ("known", "other"):
        (storage / started).mkdir(parents=True)
        (storage / started / STATE_FILE).write_text("{}")
        (storage / started / TUNE_STATE).write_bytes(pickle.dumps({}))
    space = write_space(tmp_path, "nothing", dataset)
    for name in (["--name", "nothing"], ["--space", str(space)]):
        proc = run_tuner(["search", "--resume", *name, "--storage", str(storage)],
                         cwd=tmp_path, timeout=120)
        assert proc.returncode == 2
        assert (f"no study 'nothing' to resume in {storage} (studies there: known, other)"
                in " ".join(proc.stderr.split())), proc.stderr
    # a study whose own files are lost: each named, with nothing started
    known = storage / "known"
    (known / "trial_1").mkdir()
    for lose, found in ((lambda: (known / TUNE_STATE).write_bytes(pickle.dumps({})[:-1]),
                         f"{known / TUNE_STATE}: cut short"),
                        (lambda: (known / TUNE_STATE).unlink(),
                         f"{known / TUNE_STATE}: missing (Tune writes it as the study starts)"),
                        (lambda: (known / STATE_FILE).unlink(),
                         f"{known / STATE_FILE}: missing (it records the study's space file")):
        lose()
        proc = run_tuner(["search", "--resume", "--name", "known", "--storage", str(storage)],
                         cwd=tmp_path, timeout=120)
        assert proc.returncode == 2
        assert found in " ".join(proc.stderr.split()), proc.stderr
        (known / TUNE_STATE).write_bytes(pickle.dumps({}))


def test_resume_reads_no_study_outside_its_storage(tmp_path: Path) -> None:
    """--name names a folder under --storage: a path that leaves it is refused, not read."""
    outside, storage = tmp_path / "outside", tmp_path / "runs"
    outside.mkdir()
    storage.mkdir()
    (outside / "tuner.pkl").write_bytes(b"")
    (outside / "tuner_study.json").write_text(json.dumps({"space": str(tmp_path / "read.yaml")}))
    for name in ("../outside", str(outside)):
        proc = run_tuner(["search", "--resume", "--name", name, "--storage", str(storage)],
                         cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and f"--name {name!r} must start with a letter" in " ".join(
            proc.stderr.split()), proc.stderr


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


# Pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "seen"), [(None, "60"), ("5", "5")])
def test_a_reused_actor_waits_for_its_last_trial_to_unwind(given: str | None, seen: str) -> None:
    """Tune's 2 s for a stopped trial's thread to end was too short on a busy machine (the next
    trial failed unrecorded, holding a slot): a study sets 60 s, unless the user set a value."""
    env = {k: v for k, v in ENV.items() if k != "TUNE_FUNCTION_THREAD_TIMEOUT_S"}
    if given is not None:
        env["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = given
    code = ("import os; from tuner.search import environment; environment.configure(local=True);"
            " print(os.environ['TUNE_FUNCTION_THREAD_TIMEOUT_S'])")
    out = subprocess.run([sys.executable, "-c", code],
                         env=env, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == seen


def test_stopping_points_are_where_the_scheduler_decides(tmp_path: Path, dataset: Path) -> None:
    from tuner.search.algorithms import build_scheduler, stopping_points
    from tuner.space import load_study

    def study(**search: Any) -> Any:
        return load_study(write_space(tmp_path, "points", dataset, search=search))

    for asha in ({"grace_period": 5120, "reduction_factor": 2},
                 {"grace_period": 4096, "reduction_factor": 3, "brackets": 2}):
        asha_study = study(scheduler="asha", asha=asha)
        milestones = {milestone for bracket in build_scheduler(asha_study)._brackets
                      for milestone, _ in bracket._rungs}  # Ray's own rungs, every bracket
        assert set(stopping_points(asha_study)) == milestones
    assert stopping_points(study(scheduler="asha", asha={"grace_period": 4096,
                                                         "reduction_factor": 3})) == (
        4096, 12288, 36864)
    assert stopping_points(study(scheduler="none")) == ()
    assert stopping_points(study(scheduler="median")) is None


def test_pbt_moves_a_choice_to_another_of_its_values(tmp_path: Path, dataset: Path) -> None:
    """A searched choice that PBT perturbs goes to a neighbouring value (or a fresh draw), never
    to 1.2 times itself: β2 of 1.188 failed the trial, and None × 1.2 the study."""
    from ray.tune.schedulers.pbt import _explore

    from tuner.search.algorithms import pbt_mutations
    from tuner.space import load_study

    study = load_study(write_space(tmp_path, "pbtchoice", dataset, hparams={
        "lr_max": {"loguniform": [1e-4, 1e-2]}, "beta2": {"choice": [0.99, 0.999]},
        "grad_clip": {"choice": [0.5, 1.0, None]}},
        search={"scheduler": "pbt", "pbt": {"params": ["lr_max", "beta2", "grad_clip"]}}))
    mutations = pbt_mutations(study)
    assert mutations["beta2"] == [0.99, 0.999] and mutations["grad_clip"] == [0.5, 1.0, None]
    for _ in range(50):
        config, _ = _explore({"lr_max": 1e-3, "beta2": 0.99, "grad_clip": None}, mutations,
                             0.25, (1.2, 0.8), None)
        assert config["beta2"] in (0.99, 0.999) and config["grad_clip"] in (0.5, 1.0, None)


def test_pbt_runs_at_most_max_concurrent_trials(tmp_path: Path, dataset: Path) -> None:
    """Tune ignores max_concurrent_trials beside PBT's generator: the generator holds it."""
    from tuner.search.runner import tune_config
    from tuner.space import load_study

    study = load_study(write_space(tmp_path, "pbtone", dataset,
                                   hparams={"lr_max": {"loguniform": [1e-4, 1e-2]}},
                                   search={"scheduler": "pbt", "max_concurrent": 1}))
    assert tune_config(study).search_alg.max_concurrent == 1


def test_asha_rung_and_pbt_clipping() -> None:
    from tuner.search.algorithms import clip_to_space
    from tuner.search.outcome import asha_rung

    assert [asha_rung(t, 5120, 2) for t in (5120, 10239, 10240, 40960)] == [0, 0, 1, 3]
    clipped = clip_to_space({"beta2": 1.1988, "batch_size": 40, "lr_max": 0.01},
                            {"beta2": (0.9, 0.999), "batch_size": (8, 32)})
    assert clipped == {"beta2": 0.999, "batch_size": 32, "lr_max": 0.01}


def test_a_second_stop_is_told_apart_from_the_first_delivered_again() -> None:
    """Once Tune took a stop, the same stop again within ECHO_S is dropped (`uv run` passes on
    a Ctrl-C its process group got too); a later one ends the driver, noted as such, so that
    `tuner search` answers with the --resume command rather than a bare "aborted"."""
    from tuner.search import stopping

    before = signal.getsignal(signal.SIGINT)
    with stopping.stops_held():
        stopping._held.update(tune_listens=True, taken_at=time.monotonic())
        signal.raise_signal(signal.SIGINT)  # the echo: nothing happens
        assert not stopping.stopped_at_once()
        stopping._held["taken_at"] = time.monotonic() - 2 * stopping.ECHO_S
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert stopping.stopped_at_once()
    assert signal.getsignal(signal.SIGINT) is before
    with stopping.stops_held():  # the next study starts afresh
        assert not stopping.stopped_at_once()


def test_a_second_stop_says_whether_the_runs_were_left_running(tmp_path: Path, dataset: Path,
                                                               mlflow_store_template: Path
                                                               ) -> None:
    """A second stop that came after the first had ended the study's runs (as Ray shut down)
    does not say they stay RUNNING."""
    from mlflow import MlflowClient

    from tuner.search.lifecycle import second_stop
    from tuner.space import load_study

    uri = fresh_store(tmp_path, mlflow_store_template)
    study = load_study(write_space(tmp_path, "twice", dataset, tracking={"uri": uri}))
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(client.create_experiment("twice"), run_name="twice", tags={
        "tuner.study": "twice", "tuner.role": "study"}).info.run_id
    assert second_stop(study).endswith("its runs stay RUNNING until it is resumed")
    client.set_terminated(parent, "KILLED")
    assert second_stop(study) == "stopped at once (a second stop), after its runs had ended"


def test_a_checkpoint_that_does_not_load_is_named_where_tune_keeps_it(tmp_path: Path) -> None:
    """A resumed trial's checkpoint cut short (or emptied) fails the trial naming Tune's file,
    not the scratch copy the trainable made of it (deleted by then)."""
    from ray import tune

    from model.config import ConfigError
    from tuner.search.trainable import restore

    kept = tmp_path / "trial_a" / "checkpoint_000001"
    kept.mkdir(parents=True)
    (kept / "checkpoint.pt").write_bytes(b"")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(ConfigError) as err:
        restore(tune.Checkpoint.from_directory(str(kept)), scratch)
    assert str(err.value) == f"{kept}/checkpoint.pt: not a loadable checkpoint (the file is empty)"
    assert restore(None, scratch) == (None, 0)


def test_trained_tokens_count_each_trial_from_its_restore() -> None:
    """Tokens trained per trial from its reports: a restore (Tune's iterations_since_restore back
    at 1) starts the trainable's count again, from a checkpoint behind or ahead of where it was."""
    from tuner.search.trainable import SINCE_RESTORE, TrainedTokens

    counter = TrainedTokens()

    def report(trial: str, iteration: int, since_restore: int) -> int:
        return counter.add(trial, {"iterations_since_restore": iteration,
                                   SINCE_RESTORE: since_restore})

    assert [report("a", 1, 100), report("a", 2, 200), report("b", 1, 100)] == [100, 100, 100]
    assert report("a", 1, 100) == 100  # a PBT clone: from its donor's checkpoint, 100 more
    assert report("a", 1, 0) == 0  # restored at its end: trained nothing
    assert [report("b", 2, 300), report("b", 3, 300)] == [200, 0]
