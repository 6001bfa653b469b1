"""WSD cooldown forks: each fork scores the shorter WSD run it stands for, bit-exactly, and leaves
the main run as it would be without forks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from model.config import ConfigError, ModelConfig, TrainConfig
from model.train import train


def wsd_config(dataset: Path, **overrides) -> TrainConfig:
    """24 steps of WSD (decay over the last 6) with dropout, so that forks use every RNG."""
    model = ModelConfig(vocab_size=256, context_length=32, d_model=32, num_layers=1, num_heads=4)
    base = dict(model=model, data=str(dataset), lr_max=3e-3, warmup_iters=4, total_iters=24,
                batch_size=8, eval_interval=8, eval_windows=8, device="cpu", seed=3,
                dropout=0.1, schedule="wsd", decay_fraction=0.25, forks=2)
    return TrainConfig(**{**base, **overrides})


def test_forks_equal_runs_of_their_length_and_leave_the_main_run_as_it_was(
        byte_dataset: Path, tmp_path: Path) -> None:
    """The forks and the main run bit-exactly; and so after a resume between two forks (the
    first one kept in the checkpoint)."""
    config = wsd_config(byte_dataset)
    assert config.fork_points() == [(6, 8), (12, 16)]  # decay starts T − ⌊T/4⌋
    seen = []
    forked = train(config, on_fork=seen.append)
    alone = train(replace(config, forks=0))
    assert [(r.train_loss, r.val_loss, r.lr) for r in forked.records] == [
        (r.train_loss, r.val_loss, r.lr) for r in alone.records]
    assert seen == forked.forks and [f.steps for f in seen] == [8, 16]
    for fork in forked.forks:
        run = train(replace(config, total_iters=fork.steps, forks=0))
        assert fork.val_loss == run.final.val_loss  # bit-exact
        assert fork.tokens == run.tokens and fork.trained_tokens == (fork.steps - fork.start) * 256
    assert forked.forks[0].val_loss > forked.forks[-1].val_loss > forked.final.val_loss
    first = train(config, on_eval=lambda record: record.step == 8, checkpoint_dir=tmp_path)
    assert first.status == "stopped" and [f.start for f in first.forks] == [6]
    resumed = train(config, resume_from=tmp_path, checkpoint_dir=tmp_path)
    assert resumed.forks == forked.forks
    assert [(r.train_loss, r.val_loss) for r in resumed.records] == [
        (r.train_loss, r.val_loss) for r in forked.records]



@pytest.mark.parametrize("overrides, message", [
    (dict(schedule="cosine"), "forks: K_fork=2 needs schedule wsd"),
    (dict(forks=5), "the shortest fork's run, of 4 steps, would start its decay at step 3, "
                    "inside the warmup"),
    (dict(forks=20, warmup_iters=0), "of 1 steps, would start its decay at step 1, and decay "
                                     "for no step"),
])
def test_forks_that_cannot_work_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        wsd_config(Path("x"), **overrides).validate()



def test_a_study_forks_its_wsd_trials_alone_and_counts_their_tokens(tmp_path: Path) -> None:
    from tuner.search.run.console import most_tokens
    from tuner.space import load_study
    from tuner.space.errors import SpaceError

    text = ("data: {source: synthetic}\nmodel: {vocab_size: 512, context_length: 32, d_model: 32, "
            "num_layers: 1, num_heads: 2}\nhparams: {schedule: SCHEDULE}\n"
            "budget: {total_iters: 200, eval_tokens: 5120, forks: 3}\n")
    path = tmp_path / "forks.yaml"
    path.write_text(text.replace("SCHEDULE", "{choice: [cosine, wsd]}"))
    study = load_study(path)
    assert most_tokens(study) == study.full_trial_tokens() * (1 + 3 * 0.2 / 2)
    configs = {s: study.trial_config({"schedule": s}, tmp_path) for s in ("cosine", "wsd")}
    assert (configs["cosine"].forks, configs["wsd"].forks) == (0, 3)
    path.write_text(text.replace("SCHEDULE", "cosine"))
    with pytest.raises(SpaceError, match="K_fork is used only when schedule is wsd"):
        load_study(path)


@pytest.mark.slow
def test_a_study_records_its_forks_and_tuner_scale_fits_through_their_budgets(
        tmp_path: Path, byte_dataset: Path, mlflow_store_template: Path) -> None:
    """Two α_max of 20 steps, each forking at 6 and 13 steps: MLflow holds each fork's loss at
    its budget, the tokens trained count the forks, and one study is three budgets of a fit."""
    from inspect_study import tuner
    from studies import fresh_store, mlflow_runs, run_tuner, write_space

    uri = fresh_store(tmp_path / "store", mlflow_store_template)
    space = write_space(tmp_path, "forked", byte_dataset, model={"vocab_size": 256},
                        hparams={"α_max": {"grid": [0.003, 0.03]}, "schedule": "wsd",
                                 "decay_fraction": 0.25},
                        budget={"tokens": 10240, "forks": 2},  # 20 steps of 512 tokens
                        search={"algorithm": "grid", "scheduler": "none"},
                        tracking={"uri": uri, "log_checkpoints": "none"})
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri, "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client, _, children = mlflow_runs(uri, "forked")
    assert len(children) == 2
    for run in children:
        forks = client.get_metric_history(run.info.run_id, "fork_val_loss")
        assert sorted(m.step for m in forks) == [6 * 512, 13 * 512]
        assert run.data.metrics["tokens_trained"] == 10240 + (1 + 3) * 512  # ⌊6/4⌋ + ⌊13/4⌋

    code, text = tuner("scale", "--study", "forked", "--out", str(tmp_path / "fit"),
                       "--tracking-uri", uri)
    assert code == 0, text
    fit = json.loads((tmp_path / "fit" / "scaling.json").read_text())
    assert {(s["name"], s["tokens"], s["trials"]) for s in fit["studies"]} == {
        ("forked", 10240, 2), ("forked:fork=1", 3072, 2), ("forked:fork=2", 6656, 2)}
    assert fit["laws"]["lr_max"]["points"] >= 3
