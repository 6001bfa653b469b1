"""`tuner probe` and the trainer's α range test (model.lr_probe) on a tiny model: a real sweep,
a real sqlite MLflow store, the study file edited in place."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
from inspect_study import tuner
from studies import fresh_store, run_tuner

from model.config import ModelConfig, TrainConfig
from model.lr_probe import STOP_FACTOR, ProbeCurve, ProbePoint, lr_probe, suggest_range
from tuner.errors import UserError
from tuner.space import LogUniform, load_study
from tuner.space.edit import set_hparam

STUDY = """\
# a tiny study: its comments and layout must survive --write
name: {name}
data: {{path: {data}}}
model: {{vocab_size: 256, context_length: 32, d_model: {d_model}, num_layers: 1,
        num_heads: 2{model}}}
hparams:
  B: {{choice: [4, 8]}}          # the probe takes the smallest
  {alpha}
  warmup_fraction: 0.1
budget: {{total_iters: 40, eval_tokens: 1280, eval_windows: 8, seed: 0}}
search: {{algorithm: random, num_samples: 4}}   # kept as written
resources: {{device: cpu}}
tracking: {{uri: {uri}}}
"""
ALPHA = "α_max: {loguniform: [1.0e-3, 3.0e-2]}   # the range to probe"


def study_file(folder: Path, data: Path, uri: str, alpha: str = ALPHA, d_model: int | str = 32,
               model: str = ", d_ff: 64", name: str = "tiny") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(STUDY.format(name=name, data=data, uri=uri, alpha=alpha, d_model=d_model,
                                 model=model), encoding="utf-8")
    return path


def tiny_config(data: Path) -> TrainConfig:
    return TrainConfig(model=ModelConfig(vocab_size=256, context_length=32, d_model=32,
                                         num_layers=1, num_heads=2, d_ff=64),
                       data=str(data), batch_size=4, total_iters=10, device="cpu", seed=3)


def test_the_sweep_repeats_exactly_and_stops_where_the_loss_diverges(byte_dataset):
    torch.set_num_threads(1)
    first = lr_probe(tiny_config(byte_dataset), start=1e-5, end=100.0, steps=80)
    again = lr_probe(tiny_config(byte_dataset), start=1e-5, end=100.0, steps=80)
    assert [p.loss for p in first.points] == [p.loss for p in again.points]
    assert first.diverged and len(first.points) < 80
    last = first.points[-1]
    assert not math.isfinite(last.loss) or \
        last.smoothed > STOP_FACTOR * min(p.smoothed for p in first.points)
    assert first.points[0].lr == 1e-5
    assert all(b.lr > a.lr for a, b in zip(first.points, first.points[1:]))
    found = suggest_range(first)
    assert found.problem is None
    assert 1e-5 <= found.lo <= found.steepest < found.hi == found.lowest <= last.lr


def _curve(losses: list[float], diverged: bool) -> ProbeCurve:
    points = [ProbePoint(i, 1e-6 * 1.2**i, loss, loss) for i, loss in enumerate(losses)]
    return ProbeCurve(points, diverged, 0, 0)


@pytest.mark.parametrize("losses, diverged, problem", [
    ([5.0] * 40, False, "never_decreased"),
    ([5.0, 5.0, 6.0, 9.0, 30.0, math.nan], True, "diverged_at_once"),
    ([5.0 - 0.1 * i for i in range(40)], False, "never_turned_up"),
])
def test_a_curve_without_a_range_says_why(losses, diverged, problem):
    found = suggest_range(_curve(losses, diverged))
    assert (found.problem, found.lo, found.hi) == (problem, None, None)
    assert found.advice


def test_probe_records_the_run_and_writes_the_range_keeping_the_file(
        tmp_path, byte_dataset, mlflow_store_template):
    """The α range, then the batch advice of a run at its middle: both printed, recorded in the
    probe's run and written in place of α_max's and B's values, the rest of the file kept."""
    from mlflow import MlflowClient

    uri = fresh_store(tmp_path / "store", mlflow_store_template)
    space = study_file(tmp_path, byte_dataset, uri)
    before = space.read_text(encoding="utf-8")
    code, out = tuner("probe", "--space", str(space), "--write", "--steps", "80",
                      "--noise-steps", "40", "--start", "1e-5", "--end", "100",
                      "--out", str(tmp_path / "report"))
    assert code == 0, out
    assert (tmp_path / "report" / "probe.png").stat().st_size > 10_000
    after = space.read_text(encoding="utf-8")
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(before.splitlines()) == len(after.splitlines()) and len(changed) == 2
    assert changed[0][1].startswith("  B: {choice: [")
    assert changed[0][1].endswith("]}          # the probe takes the smallest")
    assert changed[1][1].startswith("  α_max: {loguniform: [")
    assert changed[1][1].endswith("]}   # the range to probe")
    written = load_study(space).searched()["lr_max"]
    assert isinstance(written, LogUniform) and f"[{written.lo:.2g}, {written.hi:.2g}]" in out
    batches = load_study(space).searched()["batch_size"].options()
    assert f"suggested B: {{choice: [{', '.join(map(str, batches))}]}}" in out
    assert re.search(r"batch advice: a run of 5,120 tokens \(.+ of the study's\) at α \S+ and "
                     r"B 4; its gradient noise scale B_simple \(sequences\) along it: "
                     r"\S+( → \S+){9} ", out), out
    assert "the study's" in out and "suggested" in out  # the table marks both

    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                               "tags.`tuner.role` = 'probe'")
    assert run.data.tags["tuner.study"] == "tiny"
    assert run.data.tags["tuner.probe.outcome"] == "range"
    assert (float(run.data.params["lr_max_lo"]), float(run.data.params["lr_max_hi"])) == (
        written.lo, written.hi)
    assert run.data.params["batch_size"] == "4"
    assert run.data.params["batch_suggested"] == ",".join(map(str, batches))
    assert int(run.data.params["batch_largest_fit"]) >= max(batches)  # what fits bounds them
    assert run.data.params["noise_tokens"] == "5120" and run.data.params["noise_steps"] == "40"
    noise = client.get_metric_history(run.info.run_id, "noise_scale")
    assert [m.step for m in noise] == list(range(4, 41, 4))  # the short run's steps
    assert float(run.data.params["noise_scale"]) == noise[-1].value
    assert "**B: {choice: [" in run.data.tags["mlflow.note.content"]
    steps = int(run.data.params["steps_run"])
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == steps
    assert [m.step for m in client.get_metric_history(run.info.run_id, "lr")] == list(range(steps))
    assert {f.path for f in client.list_artifacts(run.info.run_id)} == {
        "probe.png", "probe_config.json"}
    assert run.info.status == "FINISHED"


def test_probe_writes_alpha_alone_where_b_choices_would_not_validate(
        tmp_path, byte_dataset, mlflow_store_template):
    """Searching B needs budget.eval_tokens under ASHA: a study that fixes B and evaluates every
    k steps gets α_max's range, and says why not B's choices."""
    uri = fresh_store(tmp_path / "store", mlflow_store_template)
    space = study_file(tmp_path, byte_dataset, uri)
    space.write_text(space.read_text(encoding="utf-8").replace(
        "B: {choice: [4, 8]}", "B: 4").replace("eval_tokens: 1280", "eval_interval: 10"),
        encoding="utf-8")
    code, out = tuner("probe", "--space", str(space), "--write", "--steps", "80",
                      "--noise-steps", "10", "--start", "1e-5", "--end", "100",
                      "--out", str(tmp_path / "report"))
    assert code == 0, out
    assert "B's suggested choices were not written, α_max's range alone: " in out
    assert "eval_tokens" in out and "left as it was" not in out
    study = load_study(space)
    assert isinstance(study.searched()["lr_max"], LogUniform)
    assert "batch_size" not in study.searched() and "\n  B: 4   " in space.read_text()


@pytest.mark.parametrize("sweep, problem", [
    (("--start", "1e-9", "--end", "1e-8"), "never decreased"),
    (("--start", "50", "--end", "1e4"), "diverged at once"),
])
def test_probe_without_a_range_exits_1_and_writes_nothing(
        tmp_path, byte_dataset, mlflow_store_template, sweep, problem):
    uri = fresh_store(tmp_path / "store", mlflow_store_template)
    space = study_file(tmp_path, byte_dataset, uri)
    before = space.read_text(encoding="utf-8")
    code, out = tuner("probe", "--space", str(space), "--write", "--steps", "20", *sweep,
                      "--out", str(tmp_path / "report"))
    assert code == 1, out
    assert f"no α_max range: {problem}" in out and "the study file was left as it was" in out
    assert space.read_text(encoding="utf-8") == before


def test_probe_refuses_a_file_it_cannot_edit_before_it_runs(
        tmp_path, byte_dataset, mlflow_store_template):
    uri = fresh_store(tmp_path / "store", mlflow_store_template)
    space = study_file(tmp_path, byte_dataset, uri,
                       alpha="α_max:\n    loguniform: [1.0e-3, 3.0e-2]")
    before = space.read_text(encoding="utf-8")
    code, out = tuner("probe", "--space", str(space), "--write", "--out", str(tmp_path / "r"))
    assert code == 2, out
    assert "cannot set hparams.lr_max in place" in out and "one line" in out
    assert space.read_text(encoding="utf-8") == before
    assert not (tmp_path / "r").exists()


# the study: 8,192 tokens at context 64 (the probe advised B {choice: [32, 64, 128]})
SHORT = """\
name: short
data: {{path: {data}}}
model: {{vocab_size: 256, context_length: 64, d_model: 32, num_layers: 1, num_heads: 2, d_ff: 64}}
hparams:
  B: {{choice: [4, 8]}}
  α_max: {{loguniform: [1.0e-3, 3.0e-2]}}
  warmup_fraction: 0.1
budget: {{tokens: 8192, eval_tokens: 2048, eval_windows: 8, seed: 0}}
search: {{algorithm: random, num_samples: 2}}
resources: {{device: cpu}}
tracking: {{uri: {uri}}}
"""


def test_batch_advice_leaves_each_trial_the_steps_it_needs_or_says_why_none_fits(tmp_path):
    from tuner.probe.batch import long_enough

    space = tmp_path / "short.yaml"
    space.write_text(SHORT.format(data=tmp_path, uri="sqlite:///x.db"), encoding="utf-8")
    study = load_study(space)
    assert long_enough(study, [4, 8, 16]) == ([4, 8], "")  # B 16: 8 steps
    kept, why = long_enough(study, [32, 64, 128])
    assert kept == [] and why == (
        "none of the B's around B_simple (32, 64, 128) leaves the study's trials the steps they "
        "need: at B 32 and context 64 a trial of 8,192 tokens is 4 steps (2,048 tokens a step), "
        "and a trial needs 10 at least (a warmup or first rung of 10% is a step); train more "
        "tokens, or search B up to 8, below the range")


def test_the_probe_warns_before_it_trains_more_than_the_study_and_keeps_to_its_steps(
        tmp_path, byte_dataset, mlflow_store_template):
    """It trained 242% of the study's tokens without a word, and wrote B's a trial of one step
    (B_simple here ends near 10: B 16, a trial of 8 steps, is left out)."""
    from tuner.space.trial_length import too_short

    uri = fresh_store(tmp_path / "store", mlflow_store_template)
    space = tmp_path / "short.yaml"
    space.write_text(SHORT.format(data=byte_dataset, uri=uri), encoding="utf-8")
    code, out = tuner("probe", "--space", str(space), "--write", "--steps", "80",
                      "--noise-steps", "40", "--start", "1e-5", "--end", "100",
                      "--out", str(tmp_path / "r"))
    assert code == 0, out
    warned = ("warning: the probe will train up to 30,720 tokens, 188% of the study's own 16,384 "
              "(its 2 trials in full): fewer --steps or --noise-steps train less")
    assert out.index(warned) < out.index("α range test of study short"), out
    study = load_study(space)
    written = study.searched()["batch_size"].options()
    assert all(too_short(study.budget, b, 64) is None for b in written), written
    assert "too few steps for a trial" in out and "not written" not in out, out
    assert "the advice optimises time, not tokens" in out


def _probe_runs(uri: str, study: str = "tiny") -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(study)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


@pytest.mark.parametrize("read_only", ["file", "folder"])
def test_probe_refuses_a_study_file_it_cannot_replace_before_it_trains(
        tmp_path, byte_dataset, mlflow_store_template, read_only):
    """A read-only study file trained for 34 s, then exited 2 naming a temporary file and left
    its probe run FINISHED. The tests run as root, whose access ignores the mode bits: the check
    honours them itself (no write bit for anyone is read-only)."""
    uri = fresh_store(tmp_path / "store", mlflow_store_template)
    (tmp_path / "studies").mkdir()
    space = study_file(tmp_path / "studies", byte_dataset, uri)
    locked = space if read_only == "file" else space.parent
    mode = locked.stat().st_mode
    locked.chmod(mode & ~0o222)
    try:
        code, out = tuner("probe", "--space", str(space), "--write", "--steps", "80",
                          "--out", str(tmp_path / "r"))
    finally:
        locked.chmod(mode)
    said = " ".join(out.split())
    assert code == 2, out
    what = "the study file" if read_only == "file" else "its folder"
    assert f"error: {space}: {what} is read-only, so --write could not replace it" in said
    assert not (tmp_path / "r").exists() and _probe_runs(uri) == []  # nothing trained or run
    assert sorted(p.name for p in space.parent.iterdir()) == ["tiny.yaml"]


def test_a_probe_whose_write_is_refused_ends_its_run_failed(
        tmp_path, byte_dataset, mlflow_store_template):
    """α_min fixed at 0.5: the range found cannot be α_max's (α_min ≤ α_max), so the edit is
    refused after the probe trained: exit 2, the file as it was, and the run FAILED, not
    FINISHED."""
    uri = fresh_store(tmp_path / "store", mlflow_store_template)
    space = study_file(tmp_path, byte_dataset, uri, alpha="α_max: 1.0\n  lr_min: 0.5")
    before = space.read_text(encoding="utf-8")
    code, out = tuner("probe", "--space", str(space), "--write", "--steps", "80",
                      "--noise-steps", "0", "--start", "1e-5", "--end", "100",
                      "--out", str(tmp_path / "r"))
    assert code == 2 and "the edited file would not validate" in out, out
    assert space.read_text(encoding="utf-8") == before
    [run] = _probe_runs(uri)
    assert run.info.status == "FAILED" and run.data.tags["tuner.probe.outcome"] == "range"


def test_a_read_only_store_fails_the_probe_before_it_trains_in_one_line(
        tmp_path, byte_dataset, mlflow_store_template):
    """A store that cannot be written (immutable here: root writes through mode bits) printed
    about 80 lines of MLflow's traceback, after the probe had trained, then "MLflow failed: (raised
    as a result of Query-invoked autoflush; …)"."""
    uri = fresh_store(tmp_path / "store", mlflow_store_template)
    store = tmp_path / "store" / "mlflow.db"
    space = study_file(tmp_path, byte_dataset, uri)
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri).create_experiment("tiny")  # its run is the first write
    if subprocess.run(["chattr", "+i", str(store)], capture_output=True, check=False).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        proc = run_tuner(["probe", "--space", str(space), "--steps", "80", "--out",
                          str(tmp_path / "r")], cwd=tmp_path, timeout=120)
    finally:
        subprocess.run(["chattr", "-i", str(store)], check=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == "error: MLflow failed: attempt to write a readonly database\n"
    assert "α range test" not in proc.stdout  # nothing trained: its run is made first
    assert not (tmp_path / "r" / "probe.png").exists()


def test_write_through_a_symbolic_link_edits_its_file_and_keeps_the_link(
        tmp_path, byte_dataset, mlflow_store_template):
    """A study file reached by a symbolic link: --write replaced the link by a regular file and
    left the file it pointed at as it was."""
    uri = fresh_store(tmp_path / "store", mlflow_store_template)
    (tmp_path / "real").mkdir()
    target = study_file(tmp_path / "real", byte_dataset, uri)
    link = tmp_path / "linked.yaml"
    link.symlink_to(target)
    code, out = tuner("probe", "--space", str(link), "--write", "--steps", "80", "--start",
                      "1e-5", "--end", "100", "--out", str(tmp_path / "report"))
    assert code == 0, out
    assert link.is_symlink() and link.resolve() == target
    assert "  α_max: {loguniform: [" in target.read_text(encoding="utf-8")
    assert ALPHA not in target.read_text(encoding="utf-8")
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny.yaml"]  # no temporary left


@pytest.mark.parametrize(("args", "said"), [
    (("--end", "inf"), "--end inf: must be a finite number"),
    (("--end", "1e400"), "--end inf: must be a finite number"),
    (("--start", "-inf"), "--start -inf: must be a finite number"),
    (("--end", "nan"), "--end nan: must be a finite number"),
    (("--steps", "100000000000000000000"), ("--steps 100000000000000000000: a sweep takes 10 to "
     "10,000 steps")),
    (("--steps", "9"), "--steps 9: a sweep takes 10 to 10,000 steps")])
def test_a_sweep_out_of_bounds_exits_2_naming_the_option(tmp_path, byte_dataset, args, said):
    """--end inf (or 1e400) exited 1 with an OverflowError's traceback; --steps 10^20 was taken,
    and ran 9 minutes at 1 GB until stopped."""
    space = study_file(tmp_path, byte_dataset, f"sqlite:///{tmp_path / 'none.db'}")
    code, out = tuner("probe", "--space", str(space), *args, "--out", str(tmp_path / "r"))
    assert code == 2 and f"error: {said}" in out and "Traceback" not in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # no store, no report


def test_the_range_goes_where_alpha_max_is_given_under_any_name(tmp_path):
    text = "hparams:\n  B: 8\n  lr: 0.01  # a constant\n"
    assert set_hparam(tmp_path, text, "lr_max", "{loguniform: [0.001, 0.02]}") == (
        "hparams:\n  B: 8\n  lr: {loguniform: [0.001, 0.02]}  # a constant\n")
    assert set_hparam(tmp_path, "hparams:\n  B: 8  # b\n", "lr_max", "{grid: [1]}") == (
        "hparams:\n  lr_max: {grid: [1]}\n  B: 8  # b\n")
    flow = "hparams: {B: 8, α_max: 0.01}  # flow style\n"  # edited where α_max stands
    assert set_hparam(tmp_path, flow, "lr_max", "{grid: [1]}") == (
        "hparams: {B: 8, α_max: {grid: [1]}}  # flow style\n")
    for refused in ("hparams: {B: 8}\n", "hparams:\n  α_max: &a 0.01\n", "model: {}\n"):
        with pytest.raises(UserError, match="cannot set hparams.lr_max in place"):
            set_hparam(tmp_path, refused, "lr_max", "0.1")


def test_under_mup_the_probe_trains_the_base_width(tmp_path, byte_dataset):
    from tuner.probe.run import probe_config

    transfer = study_file(tmp_path, byte_dataset, "sqlite:///x.db", name="transfer",
                          d_model="{transfer: [32, 64]}", model=", parametrization: mup")
    wide = study_file(tmp_path, byte_dataset, "sqlite:///x.db", name="wide", d_model=64,
                      model=", parametrization: mup, mup_base_d_model: 32")
    for space in (transfer, wide):
        config = probe_config(load_study(space), byte_dataset)
        assert (config.model.d_model, config.model.mup_base_d_model, config.batch_size) == (
            32, 32, 4)
