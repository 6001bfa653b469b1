"""Whole studies on real Ray and MLflow: their runs, files, summary and log; resuming one ended."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from studies import (
    ENV,
    _cut_short_as_tune_copies_it,
    by_status,
    fresh_store,
    mlflow_runs,
    run_tuner,
    write_space,
)

from model.config import train_config_from_dict
from model.schedules import LRSchedule

AWS_SECRET = "faults-study-aws-secret-4242"


@pytest.fixture(scope="module")
def faults_study(tmp_path_factory: pytest.TempPathFactory, dataset: Path,
                 mlflow_store_template: Path) -> Iterator[dict[str, Any]]:
    """One grid study of 8 trials (ASHA, rungs every 5,120 tokens): vocabulary 256 fails on the
    300-token dataset; α_max 1e-2 trains well, 1e-3 and 1e-4 worse (ASHA's prey), 50 diverges.
    Its local Ray keeps its files in a folder of its own, and the driver has an AWS key; its
    Optuna study is kept in optuna.db (search.storage)."""
    folder = tmp_path_factory.mktemp("faults")
    uri = fresh_store(folder, mlflow_store_template)
    space = write_space(folder, "faults", dataset, model={"vocab_size": {"grid": [256, 300]}},
                        hparams={"lr_max": {"grid": [1e-2, 50.0, 1e-3, 1e-4]}},
                        search={"algorithm": "grid", "scheduler": "asha",
                                "storage": f"sqlite:///{folder / 'optuna.db'}",
                                "asha": {"grace_period": 5120, "reduction_factor": 2}},
                        tracking={"system_metrics_s": 0.2})
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
        if tags["tuner.status"] == "completed":  # MLflow's system metrics of the trial's node,
            # from its process (Tune may end a stopped trial's before its first sample)
            points = client.get_metric_history(run.info.run_id,
                                               "system/cpu_utilization_percentage")
            assert points and all(0 <= p.value <= 100 for p in points)
            assert run.data.metrics["system/system_memory_usage_megabytes"] > 0


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
        # B_simple: measured at the last evaluation (80 steps, below the default interval of 100)
        noise = client.get_metric_history(run.info.run_id, "noise_scale")
        in_tokens = client.get_metric_history(run.info.run_id, "noise_scale_tokens")
        assert [m.step for m in noise] == [m.step for m in in_tokens] == [40960]
        assert 0 < noise[0].value and in_tokens[0].value == pytest.approx(32 * noise[0].value)
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
def test_optuna_holds_stopped_trials_as_pruned(faults_study: dict[str, Any]) -> None:
    """In search.storage, a trial ASHA stopped is PRUNED with its evaluations as intermediate
    values (its last the value); a completed one COMPLETE; one that failed in its trainer is
    COMPLETE with the worst value, so that the sampler learns of it."""
    import optuna

    _, _, children = mlflow_runs(faults_study["uri"], "faults")
    study = optuna.load_study(study_name="faults",
                              storage=f"sqlite:///{faults_study['folder'] / 'optuna.db'}")
    told = {(str(t.params["vocab_size"]), float(t.params["lr_max"])): t for t in study.trials}
    state = optuna.trial.TrialState
    expected = {"stopped": state.PRUNED, "completed": state.COMPLETE, "failed": state.COMPLETE}
    seen = set()
    for run in children:
        status = run.data.tags["tuner.status"]
        trial = told[(run.data.params["vocab_size"], float(run.data.params["lr_max"]))]
        if status in expected:
            assert trial.state == expected[status], (status, trial)
            seen.add(status)
        if status == "stopped":
            assert trial.intermediate_values
            assert trial.value == trial.intermediate_values[max(trial.intermediate_values)]
            assert trial.value == pytest.approx(run.data.metrics["val_loss"])
        if status == "failed":
            assert trial.value == math.inf
    assert seen == set(expected)


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

    from tuner.search.run.console import Summary, print_summary

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


@pytest.mark.slow
def test_resume_refuses_flags_that_change_the_study(faults_study: dict[str, Any]) -> None:
    """A resumed study keeps its settings: a flag that would change one is refused, not ignored,
    naming each with its value then and now, and nothing is written. A larger --num-samples is
    an extension (test_extension.py), not a change: it is not named."""
    folder = faults_study["folder"]
    storage = folder / "ray" / "faults"
    before = {p: p.read_bytes() for p in storage.rglob("*") if p.is_file()}
    proc = run_tuner(["search", "--resume", "--name", "faults", "--num-samples", "20",
                      "--max-concurrent", "2", "--tracking-uri", "sqlite:///other.db",
                      "--storage", str(folder / "ray")], cwd=folder, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f"error: a resumed study keeps the settings it started with (its searcher's state "
            f"depends on them): --tracking-uri was "
            f"\"{faults_study['uri']}\", is \"sqlite:///{folder / 'other.db'}\" now. Retype the "
            "values it started with, or leave the options out; to build on it with other "
            "settings, start a new study with --warm-start faults") in " ".join(proc.stderr.split())
    assert not (folder / "other.db").exists()
    assert {p: p.read_bytes() for p in storage.rglob("*") if p.is_file()} == before

