"""The training loop: learning, determinism, exact resume, divergence and bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import CHECKPOINT_NAME, checkpoint_config, read_checkpoint, save_checkpoint
from model.config import ConfigError, ModelConfig, TrainConfig, load_train_config
from model.layers import TransformerLM
from model.optim import build_optimizer
from model.tokenizer import Tokenizer
from model.train import EvalRecord, peak_flops_of, train

REPO = Path(__file__).resolve().parents[1]


def tiny_config(dataset: Path, **overrides) -> TrainConfig:
    model = ModelConfig(vocab_size=256, context_length=32, d_model=32, num_layers=2, num_heads=4)
    base = dict(model=model, data=str(dataset), lr_max=3e-3, warmup_iters=5, total_iters=40,
                batch_size=8, eval_interval=10, eval_windows=8, device="cpu", seed=3)
    return TrainConfig(**{**base, **overrides})


def losses(records: list[EvalRecord]) -> list[tuple[float, float]]:
    return [(r.train_loss, r.val_loss) for r in records]


def test_validation_loss_falls(byte_dataset: Path) -> None:
    result = train(tiny_config(byte_dataset, total_iters=60, lr_max=1e-2))
    assert result.status == "completed"
    assert result.steps == 60 and result.tokens == 60 * 8 * 32
    assert [r.step for r in result.records] == [10, 20, 30, 40, 50, 60]
    assert result.records[-1].val_loss < result.records[0].val_loss - 0.5
    assert result.records[-1].val_ppl == pytest.approx(math.exp(result.records[-1].val_loss))


def test_eval_tokens_evaluates_every_batch_size_at_equal_token_counts(byte_dataset: Path) -> None:
    tokens = {b: [r.tokens for r in train(tiny_config(
        byte_dataset, batch_size=b, total_iters=None, total_tokens=7680, eval_tokens=1536)).records]
              for b in (2, 4, 6)}
    assert tokens[2] == tokens[4] == tokens[6] == [1536, 3072, 4608, 6144, 7680]
    # 1000 tokens is 5.2 steps of B = 6: each evaluation at the first step that reaches a multiple
    uneven = train(tiny_config(byte_dataset, batch_size=6, total_iters=30, eval_tokens=1000))
    assert [r.step for r in uneven.records] == [6, 11, 16, 21, 27, 30]


def test_same_seed_gives_identical_losses(byte_dataset: Path) -> None:
    config = tiny_config(byte_dataset, dropout=0.1)
    first, second = train(config), train(replace(config))
    assert losses(first.records) == losses(second.records)
    other = train(replace(config, seed=4))
    assert losses(other.records) != losses(first.records)


def test_resume_equals_uninterrupted_run(byte_dataset: Path, tmp_path: Path) -> None:
    config = tiny_config(byte_dataset, dropout=0.1, schedule="plateau", plateau_patience=0)
    full = train(config)
    stopped = train(config, on_eval=lambda r: r.step >= 20, checkpoint_dir=tmp_path)
    assert stopped.status == "stopped" and stopped.steps == 20
    resumed = train(config, resume_from=tmp_path)
    assert resumed.status == "completed"
    assert losses(resumed.records) == losses(full.records)
    assert [r.lr for r in resumed.records] == [r.lr for r in full.records]


def test_checkpoints_on_a_clock_keep_the_end_and_the_marks_and_are_durable_when_seen(
        byte_dataset: Path, tmp_path: Path) -> None:
    """With checkpoints minutes apart, a short run keeps one at its end and at the first
    evaluation past each mark; written in the background, each is on disk, at its step, when
    on_eval sees its evaluation, and a run resumed from it equals the uninterrupted one."""
    config = tiny_config(byte_dataset, dropout=0.1)  # evaluations at steps 10, 20, 30, 40
    folder, seen = tmp_path / "run", []

    def on_eval(record: EvalRecord) -> None:
        on_disk = (read_checkpoint(folder, mmap=True)["iteration"]
                   if (folder / CHECKPOINT_NAME).exists() else None)
        seen.append((record.step, record.checkpointed, on_disk))
        if record.checkpointed and record.step == 20:
            shutil.copy(folder / CHECKPOINT_NAME, tmp_path / "mid.pt")

    result = train(config, on_eval=on_eval, checkpoint_dir=folder, checkpoint_every_s=3600,
                   checkpoint_at=(15 * config.tokens_per_step,))
    assert seen == [(10, False, None), (20, True, 20), (30, False, 20), (40, True, 40)]
    assert result.status == "completed" and os.listdir(folder) == [CHECKPOINT_NAME]
    resumed = train(config, resume_from=tmp_path / "mid.pt")
    assert losses(resumed.records) == losses(train(config).records)


def test_a_checkpoint_between_evaluations_resumes_at_its_step_exactly(byte_dataset: Path,
                                                                       tmp_path: Path) -> None:
    """A checkpoint asked for between evaluations (a preemption notice) is written at the step
    training is at, and training goes on; resumed from it after a kill, the run equals the
    uninterrupted one: the train loss of the interval it cut counts the steps before it too."""
    config = tiny_config(byte_dataset, dropout=0.1)
    full = train(config)
    saved: list[tuple[int, int | None]] = []

    def at_step_13() -> Callable[[], bool]:
        asked = iter(range(100))  # asked before each step
        return lambda: next(asked) == 13

    went_on = train(config, checkpoint_dir=tmp_path / "on", checkpoint_now=at_step_13(),
                    on_checkpoint=lambda step, last: saved.append((step, last and last.step)))
    assert saved == [(13, 10)] and went_on.status == "completed"
    assert losses(went_on.records) == losses(full.records)

    def killed(step: int, last: EvalRecord | None) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, checkpoint_dir=tmp_path / "cut", checkpoint_now=at_step_13(),
              on_checkpoint=killed)
    resumed = train(config, resume_from=tmp_path / "cut")
    assert [r.step for r in resumed.records] == [10, 20, 30, 40]
    assert losses(resumed.records) == losses(full.records)


def test_resuming_a_finished_run_makes_no_folder(byte_dataset: Path, tmp_path: Path) -> None:
    """A checkpoint at its last step, resumed into another folder: its results, and no empty
    folder left behind."""
    config = tiny_config(byte_dataset, total_iters=20)
    done = train(config, checkpoint_dir=tmp_path / "run")
    again = train(config, resume_from=tmp_path / "run", checkpoint_dir=tmp_path / "branch")
    assert again.steps == 20 and losses(again.records) == losses(done.records)
    assert again.checkpoint is None and not (tmp_path / "branch").exists()


def test_resume_refuses_its_folder_prepared_again(byte_dataset: Path, tmp_path: Path) -> None:
    """A checkpoint names its dataset folder: prepared again with other content, the run would go
    on with other token ids, so it is refused; another folder named on purpose is used."""
    data = tmp_path / "data"
    shutil.copytree(byte_dataset, data)
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "sha256": {"input": "a" * 64}}))
    config = tiny_config(data, total_iters=20)
    train(config, on_eval=lambda r: r.step >= 10, checkpoint_dir=tmp_path / "run")
    other = tmp_path / "other"
    shutil.copytree(data, other)
    (data / "meta.json").write_text(json.dumps({**meta, "sha256": {"input": "b" * 64}}))
    with pytest.raises(ConfigError, match=f"^{data}: is not the dataset .*checkpoint.pt trained "
                                          "on: it was prepared again since"):
        train(config, resume_from=tmp_path / "run")
    assert train(replace(config, data=str(other)), resume_from=tmp_path / "run").steps == 20


@pytest.mark.parametrize(("name", "content"), [("vocab.json", b"[1, 2]"),
                                              ("merges.txt", b"\xff\xfe")])
def test_a_damaged_tokenizer_is_a_config_error_naming_the_folder(byte_dataset: Path, tmp_path: Path,
                                                                name: str, content: bytes) -> None:
    for split in ("train.npy", "valid.npy", "meta.json"):
        shutil.copy(byte_dataset / split, tmp_path / split)
    Tokenizer({i: bytes([i]) for i in range(256)}, []).save(tmp_path)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ConfigError, match=f"^{tmp_path}: its tokenizer cannot be read .*{name}"):
        train(tiny_config(tmp_path, sample_tokens=4))


def test_a_prompt_generation_cannot_start_from_is_refused_before_training(
        byte_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"  # a tokenizer without <|endoftext|>, the empty prompt's start
    data.mkdir()
    for name in ("train.npy", "valid.npy", "meta.json"):
        shutil.copy(byte_dataset / name, data / name)
    Tokenizer({i: bytes([i]) for i in range(256)}, []).save(data)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="^sample_prompt: is empty"):
        train(tiny_config(data, sample_tokens=4, sample_prompt=""), checkpoint_dir=out)
    assert not out.exists()


def test_samples_come_only_where_the_caller_may_stop(byte_dataset: Path, tmp_path: Path) -> None:
    for name in ("train.npy", "valid.npy", "meta.json"):
        shutil.copy(byte_dataset / name, tmp_path / name)
    Tokenizer({i: bytes([i]) for i in range(256)}, []).save(tmp_path)
    config = tiny_config(tmp_path, eval_interval=5, sample_tokens=4)  # 256 tokens a step

    def sampled(**kwargs) -> list[int]:
        return [r.step for r in train(config, **kwargs).records if r.sample is not None]

    assert sampled() == [5, 10, 15, 20, 25, 30, 35, 40]
    assert sampled(sample_at=()) == [40]  # the last evaluation only
    # the first evaluation at or past each count: 1,280 (step 5) → 5; 3,500 (step 13.7) → 15
    assert sampled(sample_at=(1280, 3500)) == [5, 15, 40]
    stopped = train(config, on_eval=lambda r: r.step == 15, sample_at=(3500,))
    assert [r.step for r in stopped.records if r.sample] == [15]
    # a sample draws from its own generator: the losses do not change
    assert losses(train(config, sample_at=()).records) == losses(train(config).records)


def test_callback_can_stop_and_sees_every_evaluation(byte_dataset: Path) -> None:
    seen: list[int] = []
    result = train(tiny_config(byte_dataset), on_eval=lambda r: seen.append(r.step) or r.step == 30)
    assert seen == [10, 20, 30] and result.status == "stopped" and result.steps == 30


def test_runaway_loss_stops_as_diverged(byte_dataset: Path) -> None:
    seen: list[EvalRecord] = []
    result = train(tiny_config(byte_dataset, optimizer="sgd", lr_max=1e4, warmup_iters=0,
                               grad_clip=None), on_eval=seen.append)
    assert result.status == "diverged"
    assert result.steps < 40 and seen[-1].val_loss == math.inf


@pytest.mark.parametrize("diverging_step", [1, 10, 11, 40, "first after a resume"])
def test_divergence_is_recorded_at_the_step_that_diverged(byte_dataset: Path, tmp_path: Path,
                                                          monkeypatch, diverging_step) -> None:
    """The record of a run that diverged is that of the step whose loss ran away: its step, lr
    and gradient norm, and the train loss over the steps since the last evaluation."""
    import model.train as trainer

    config = tiny_config(byte_dataset, dropout=0.1)
    clean = train(replace(config, eval_interval=1)).records  # a record per step: its loss, lr...
    resume = diverging_step == "first after a resume"
    if resume:
        train(config, on_eval=lambda r: r.step >= 20, checkpoint_dir=tmp_path)
    step = 21 if resume else diverging_step
    calls = 20 if resume else 0  # training steps taken so far in this run
    clean_loss = trainer.cross_entropy

    def runaway_at_step(logits, targets, *smoothing):
        nonlocal calls
        loss = clean_loss(logits, targets, *smoothing)
        if smoothing:  # a training step's (evaluations pass no smoothing)
            calls += 1
            loss = loss * 1000 if calls == step else loss
        return loss

    monkeypatch.setattr(trainer, "cross_entropy", runaway_at_step)
    result = train(config, resume_from=tmp_path if resume else None)
    record, at = result.records[-1], clean[step - 1]
    assert (result.status, result.steps, record.step, record.tokens) == (
        "diverged", step, step, at.tokens)
    assert record.val_loss == math.inf and record.lr == at.lr
    assert record.grad_norm == pytest.approx(1000 * at.grad_norm, rel=1e-3)
    since = [r.train_loss for r in clean if (step - 1) // 10 * 10 < r.step < step]
    assert record.train_loss == pytest.approx((sum(since) + 1000 * at.train_loss) /
                                              (len(since) + 1), rel=1e-4)


@pytest.mark.parametrize("overrides, field", [
    ({"model": ModelConfig(vocab_size=256, d_model=30, num_heads=4, context_length=32)},
     "model.num_heads"),
    ({"lr_max": 0.0}, "lr_max"),
    ({"beta2": 1.0}, "beta2"),
    ({"beta1": -0.1}, "beta1"),
    ({"warmup_iters": 40}, "warmup_iters"),
    ({"model": ModelConfig(vocab_size=256, d_model=32, num_heads=4, num_layers=1,
                           context_length=200_000)}, "model.context_length"),
    ({"model": ModelConfig(vocab_size=100, d_model=32, num_heads=4, context_length=32)},
     "model.vocab_size"),
    ({"data": "/nonexistent/dataset"}, "data"),
    ({"total_tokens": 10240}, "total_iters"),  # and total_iters: which one would be the budget?
    ({"model": {"vocab_size": 256, "d_model": None, "num_heads": 4}}, "model.d_model"),
    ({"batch_size": 8.5}, "batch_size"),
    ({"device": "mps"}, "device"),  # a device torch knows, but not one this trains on
    ({"device": "meta"}, "device"),
    ({"device": "cuda:99"}, "device"),
])
def test_bad_config_names_the_field_before_any_step(byte_dataset: Path, overrides: dict,
                                                    field: str) -> None:
    seen: list[EvalRecord] = []
    with pytest.raises(ConfigError) as err:
        train(tiny_config(byte_dataset, **overrides), on_eval=seen.append)
    assert err.value.field == field and not seen


def test_whole_number_floats_train_as_ints(byte_dataset: Path, tmp_path: Path) -> None:
    """16.0 (JSON, a float search range) is accepted where a count is due, and trains exactly as
    16 does; a checkpoint folder that does not exist yet is made."""
    floats = tiny_config(byte_dataset, batch_size=8.0, seed=3.0, eval_windows=8.0,
                         model=ModelConfig(vocab_size=256, context_length=32.0, d_model=32.0,
                                           num_layers=2, num_heads=4))
    result = train(floats, checkpoint_dir=tmp_path / "new" / "ckpt")
    assert losses(result.records) == losses(train(tiny_config(byte_dataset)).records)
    assert (tmp_path / "new" / "ckpt").is_dir()


def test_relative_forms_set_warmup_and_floor(byte_dataset: Path, tmp_path: Path) -> None:
    """warmup_fraction and lr_min_ratio (SYMBOLS.md: T_warmup as a fraction of T_total) resolve to
    warmup_iters and lr_min, in a config file too, and train exactly as the absolute values do."""
    relative = tiny_config(byte_dataset, warmup_iters=0, warmup_fraction=0.25, lr_min_ratio=0.5)
    assert (relative.warmup_iters, relative.lr_min) == (10, 1.5e-3)
    assert "warmup_fraction" not in relative.to_dict()
    study = tmp_path / "fixed.yaml"
    study.write_text(f"data: {{path: {byte_dataset}}}\nbudget: {{total_iters: 40}}\n"
                     "hparams: {T_warmup/T_total: 0.25, lr_min_ratio: 0.5, lr: 3.0e-3}\n")
    loaded = load_train_config(study)
    assert (loaded.warmup_iters, loaded.lr_min) == (10, 1.5e-3)
    absolute = tiny_config(byte_dataset, warmup_iters=10, lr_min=1.5e-3)
    assert losses(train(relative).records) == losses(train(absolute).records)


@pytest.mark.parametrize(("fraction", "steps"), [(0.29, 29), (0.57, 57), (0.58, 58), (0.1, 10)])
def test_warmup_fraction_floors_the_fraction_as_written(byte_dataset: Path, fraction: float,
                                                       steps: int) -> None:
    """T_warmup = ⌊fraction·T_total⌋ of the decimal given: 0.29·100 is 28.999… in floats."""
    config = tiny_config(byte_dataset, warmup_iters=0, total_iters=100, warmup_fraction=fraction)
    assert config.warmup_iters == steps


def test_a_fixed_study_file_runs_as_its_one_trial(byte_dataset: Path, tmp_path: Path) -> None:
    """`python -m model.train --config` reads a study file as `tuner search` does: its resources
    (the file `tuner best --export` writes), and 3e-3 as a number (YAML 1.2; PyYAML: a string)."""
    from tuner.space import load_study

    study = tmp_path / "fixed.yaml"
    study.write_text(f"data: {{path: {byte_dataset}}}\nhparams: {{lr: 3e-3, λ: 1E-2}}\n"
                     "budget: {total_iters: 40, eval_interval: 10}\n"
                     "resources: {device: cpu, deterministic: true, peak_flops: 1.25e14, "
                     "compile: true}\n")
    for config in (load_train_config(study), load_study(study).trial_config({}, byte_dataset)):
        assert (config.device, config.deterministic, config.peak_flops) == ("cpu", True, 1.25e14)
        assert config.compile
        assert (config.lr_max, config.weight_decay) == (3e-3, 1e-2)


def test_a_token_file_as_long_as_the_context_is_too_short(tmp_path: Path) -> None:
    """A window needs its next token too: context_length + 1 tokens at least."""
    from model.token_files import check_context

    check_context(33, 32, tmp_path / "valid.npy")
    with pytest.raises(ConfigError, match=r"^model.context_length: 32 needs at least 33 tokens in "
                                          r".*valid.npy \(a window and its next token\), which "
                                          r"holds 32$"):
        check_context(32, 32, tmp_path / "valid.npy")


def test_off_turns_an_optional_setting_off(byte_dataset: Path, tmp_path: Path) -> None:
    """τ is "> 0 or off": YAML reads off as false, which means no clipping, not a number."""
    path = tmp_path / "off.yaml"
    path.write_text(f"data: {byte_dataset}\ntotal_iters: 10\ngrad_clip: off\n")
    assert load_train_config(path).grad_clip is None


def test_an_unknown_field_is_named_with_the_one_meant(byte_dataset: Path, tmp_path: Path) -> None:
    """A typo gets the field it is closest to; a name like none gets the list of fields."""
    path = tmp_path / "typo.yaml"
    for key, hint in (("lr_mx", "did you mean 'lr_max'?"), ("zzz", "known: batch_size")):
        path.write_text(f"data: {byte_dataset}\ntotal_iters: 10\n{key}: 0.01\n")
        with pytest.raises(ConfigError) as err:
            load_train_config(path)
        assert err.value.field == key and hint in str(err.value)


@pytest.mark.parametrize("overrides, field, message", [
    ({"warmup_fraction": 0.1}, "warmup_fraction", "set warmup_iters or warmup_fraction, not both"),
    ({"warmup_iters": 0, "warmup_fraction": 1.0}, "warmup_fraction", "must be in [0, 1), got 1.0"),
    ({"lr_min": 1e-4, "lr_min_ratio": 0.1}, "lr_min_ratio", "not both"),
    ({"lr_min_ratio": 1.5}, "lr_min_ratio", "α_min/α_max must be in [0, 1], got 1.5"),
    ({"lr_max": "fast", "lr_min_ratio": 0.1}, "lr_max", "must be a number"),
    ({"warmup_iters": 0, "warmup_fraction": 0.1, "batch_size": 0}, "batch_size",
     "B must be in [1, 1048576]"),
])
def test_bad_relative_form_names_the_field(byte_dataset: Path, overrides: dict, field: str,
                                           message: str) -> None:
    with pytest.raises(ConfigError) as err:
        tiny_config(byte_dataset, **overrides)
    assert err.value.field == field and message in str(err.value)


def test_a_config_file_giving_both_forms_is_refused(byte_dataset: Path, tmp_path: Path) -> None:
    """warmup_iters given at its default (0) is still given: a file may not pair it with a
    fraction, as a study file may not."""
    path = tmp_path / "both.json"
    path.write_text(json.dumps({"data": str(byte_dataset), "total_iters": 40, "warmup_iters": 0,
                                "warmup_fraction": 0.1}))
    with pytest.raises(ConfigError) as err:
        load_train_config(path)
    assert (err.value.field, "not both" in str(err.value)) == ("warmup_fraction", True)


def test_token_ids_beyond_vocab_name_the_file(byte_dataset: Path, tmp_path: Path) -> None:
    for name in ("train.npy", "valid.npy", "meta.json"):
        (tmp_path / name).write_bytes((byte_dataset / name).read_bytes())
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "vocab_size": 100}))
    with pytest.raises(ConfigError) as err:
        train(tiny_config(tmp_path, model=ModelConfig(vocab_size=100, d_model=32, num_heads=4,
                                                      context_length=32)))
    assert err.value.field.endswith("train.npy") and "not below vocab_size=100" in str(err.value)


def test_command_line_trains_and_rejects_bad_config(byte_dataset: Path, tmp_path: Path) -> None:
    config = tiny_config(byte_dataset, total_iters=20).to_dict()
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "model.train", "--config", str(path), "--out",
                          str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("step ") == 2 and "completed: 20 steps" in run.stdout
    epochs = math.ceil(20 * 8 * 32 / len(np.load(byte_dataset / "train.npy", mmap_mode="r")))
    assert f"5,120 tokens (N_epoch {epochs})" in run.stdout
    assert (out / "checkpoint.pt").is_file()

    path.write_text(json.dumps({**config, "beta2": 1.5}))
    bad = subprocess.run([sys.executable, "-m", "model.train", "--config", str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "beta2" in bad.stderr and bad.stderr.count("\n") == 1


@pytest.mark.parametrize(("stop", "started"), [("SIGINT", ""), ("SIGTERM", "uv run "),
                                               ("SIGHUP", "")])
def test_command_line_stopped_by_ctrl_c_says_how_to_continue(byte_dataset: Path, tmp_path: Path,
                                                              stop: str, started: str) -> None:
    """Ctrl-C ends a run with exit 130 and the --resume command, not a traceback; so do SIGTERM
    (`kill`, `docker stop`), which ended it without a word, and SIGHUP (a closed terminal), also
    in a run a script started in the background (SIGINT ignored). The command is printed as the
    run was started: under `uv run` when uv started it."""
    import signal

    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config(byte_dataset, total_iters=100_000).to_dict()))
    env = {**os.environ, **({"UV_RUN_RECURSION_DEPTH": "1"} if started else {})}
    run = subprocess.Popen([sys.executable, "-m", "model.train", "--config", str(path), "--out",
                            str(tmp_path / "out")], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env,
                           preexec_fn=None if stop == "SIGINT" else lambda: signal.signal(
                               signal.SIGINT, signal.SIG_IGN))
    assert run.stdout.readline().startswith("step")  # a checkpoint is written before it
    run.send_signal(getattr(signal, stop))
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and "Traceback" not in err, err
    assert err.strip() == f"interrupted; continue it with: {started}python -m model.train " \
        f"--resume {tmp_path / 'out'}"


def test_command_line_sets_torch_threads(byte_dataset: Path, tmp_path: Path) -> None:
    """--threads pins torch's CPU threads, as a study's trial does with its cpus_per_trial."""
    from model.train import main

    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config(byte_dataset, total_iters=10).to_dict()))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["--config", str(path), "--out", str(tmp_path / "out"), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    bad = subprocess.run([sys.executable, "-m", "model.train", "--config", str(path),
                          "--threads", "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--threads 0: give 1 or more" in bad.stderr


BASE = ("data: /nowhere\nmodel: {vocab_size: 256, context_length: 32, d_model: 32, num_layers: 1, "
        "num_heads: 2}\ntotal_iters: 10\n")


@pytest.mark.parametrize(("text", "field"), [
    ("- a\n- b\n", "config.yaml"),
    ("42\n", "config.yaml"),
    ("[]\n", "config.yaml"),
    (BASE + "lr_max: 0.1\nlr_max: 0.2\n", "config.yaml"),  # the later value would silently win
    (BASE + "1: 2\n", "1"),
    (BASE.replace("model: {", "model: [") .replace("2}", "2]"), "model"),
    (BASE.replace("total_iters: 10", "total_tokens: 1000\nbatch_size: 0"), "batch_size"),
    (BASE.replace("total_iters: 10", "total_iters: .inf"), "total_iters"),
    (BASE + "sample_tokens: abc\n", "sample_tokens"),
    (BASE + "fast: maybe\n", "fast"),
    ("hparams: [1]\ndata: {path: /x}\nbudget: {total_iters: 10}\n", "hparams"),
    ("hparams: {lr: 0.01, lr_max: 0.02}\ndata: {path: /x}\nbudget: {total_iters: 10}\n",
     "hparams.lr_max"),
    # a key of another section would silently set that trainer field
    ("hparams: {α_max: 0.01}\ndata: {path: /x}\nbudget: {total_iters: 10, lr_max: 0.5}\n",
     "budget.lr_max"),
    ("hparams: {bogus: 1}\ndata: {path: /x}\nbudget: {total_iters: 10}\n", "hparams.bogus"),
    ("hparams: {seed: 1}\ndata: {path: /x}\nbudget: {total_iters: 10}\n", "hparams.seed"),
])
def test_a_malformed_config_file_names_the_field_or_file(tmp_path: Path, text: str,
                                                         field: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_train_config(path).validate()
    assert Path(err.value.field).name == field


def test_a_config_file_that_does_not_parse_says_where_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("lr_max: [1, 2\nseed: 3\n")
    with pytest.raises(ConfigError) as err:
        load_train_config(path)
    assert str(err.value) == (f"{path}: not valid yaml: line 2, column 5: expected ',' or ']', "
                              "but got ':'")


def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"lr_max: 0.1\nseed: \"\xff\"\n")
    with pytest.raises(ConfigError, match="not UTF-8 text") as err:
        load_train_config(path)
    assert err.value.field == str(path)


def test_command_line_writes_nothing_for_a_bad_config_or_out(byte_dataset: Path,
                                                              tmp_path: Path) -> None:
    """A config that fails validation, or an --out that is a file, exits 2 in one line and leaves
    the working folder as it was (no runs/train)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**tiny_config(byte_dataset).to_dict(), "batch_size": 0,
                                "total_iters": None, "total_tokens": 1000}))
    taken = tmp_path / "taken"
    taken.write_text("")
    for args in (["--config", str(path)],
                 ["--config", str(path).replace("config", "none"), "--out", str(taken)]):
        run = subprocess.run([sys.executable, "-m", "model.train", *args], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, check=False,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert sorted(os.listdir(tmp_path)) == ["config.json", "taken"]
    path.write_text(json.dumps(tiny_config(byte_dataset).to_dict()))
    for args, said in ((["--out", str(taken)], f"{taken}: cannot be the checkpoint folder (File "
                                                 "exists)"),
                       (["--device", ""], "device: unknown device ''")):  # not the config's
        run = subprocess.run([sys.executable, "-m", "model.train", "--config", str(path), *args],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert run.returncode == 2 and run.stderr == f"error: {said}\n", run.stderr
    assert sorted(os.listdir(tmp_path)) == ["config.json", "taken"]


def test_command_line_resumes_a_checkpoint_with_its_own_config(byte_dataset: Path,
                                                               tmp_path: Path) -> None:
    """`--resume DIR` alone: the config saved in the checkpoint, new checkpoints in DIR, and the
    run ends as the uninterrupted one does; with `--config`, DIR is left as it was."""
    config = tiny_config(byte_dataset, total_iters=20)
    whole = train(config)
    part = tmp_path / "part"
    train(config, on_eval=lambda r: r.step >= 10, checkpoint_dir=part)
    run = subprocess.run([sys.executable, "-m", "model.train", "--resume", str(part)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert f"final val_loss {whole.final.val_loss:.4f}" in run.stdout
    assert read_checkpoint(part)["iteration"] == 20
    branch = tmp_path / "branch.json"  # another config branches off: the original is kept
    branch.write_text(json.dumps(tiny_config(byte_dataset, total_iters=30).to_dict()))
    run = subprocess.run([sys.executable, "-m", "model.train", "--config", str(branch),
                          "--resume", str(part)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    assert read_checkpoint(part)["iteration"] == 20
    assert read_checkpoint(tmp_path / "runs" / "train")["iteration"] == 30
    bare = subprocess.run([sys.executable, "-m", "model.train"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert bare.returncode == 2 and "--config FILE, or --resume" in bare.stderr


@pytest.mark.parametrize("other", [{"model": ModelConfig(vocab_size=256, context_length=32,
                                                         d_model=64, num_layers=2, num_heads=4)},
                                   *({"optimizer": name} for name in
                                     ("lars", "sgd", "adam", "rmsprop", "adagrad"))])
def test_a_checkpoint_of_another_run_is_refused_naming_it(byte_dataset: Path, tmp_path: Path,
                                                         other: dict) -> None:
    """Resuming a checkpoint written by another model shape or optimizer: one ConfigError that
    names the file, not a torch traceback."""
    train(tiny_config(byte_dataset, total_iters=10), checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        train(tiny_config(byte_dataset, total_iters=20, **other), resume_from=tmp_path,
              checkpoint_dir=tmp_path / "branch")
    assert err.value.field == str(tmp_path / "checkpoint.pt")
    assert "does not fit this config" in str(err.value)
    assert not (tmp_path / "branch").exists()  # nothing written for a run that cannot start


def _bad_model(state: dict) -> dict:
    return {**state, "model": [0]}


def _bad_optimizer(state: dict) -> dict:
    return {**state, "optimizer": ["state"]}


def _misshapen_moment(state: dict) -> dict:
    moments = {0: {**state["optimizer"]["state"][0], "exp_avg": torch.zeros(3)}}
    return {**state, "optimizer": {**state["optimizer"],
                                   "state": {**state["optimizer"]["state"], **moments}}}


@pytest.mark.parametrize(("damage", "reason"), [
    (_bad_model, "Expected state_dict to be dict-like"),
    (_bad_optimizer, "list indices must be integers"),
    (_misshapen_moment, "the optimizer's exp_avg of parameter 0 has shape (3,), not (32, 32)")])
def test_a_checkpoint_whose_model_or_optimizer_state_is_malformed_is_refused_naming_it(
        byte_dataset: Path, tmp_path: Path, damage: object, reason: str) -> None:
    """Not a state dict, or an optimizer moment of another shape (torch loads it unchecked and
    fails in the first step): one ConfigError naming the file, before anything is written."""
    config = tiny_config(byte_dataset, total_iters=10)
    train(config, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    torch.save(damage(state), tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError) as err:
        train(tiny_config(byte_dataset, total_iters=20), resume_from=tmp_path,
              checkpoint_dir=tmp_path / "branch")
    assert err.value.field == str(tmp_path / "checkpoint.pt")
    assert "does not fit this config" in str(err.value)
    assert reason in str(err.value)
    assert not (tmp_path / "branch").exists()


def test_a_checkpoint_without_the_trainers_state_is_refused_naming_it(byte_dataset: Path,
                                                                     tmp_path: Path) -> None:
    """A checkpoint of the model and optimizer alone (save_checkpoint's) cannot resume a run."""
    config = tiny_config(byte_dataset, total_iters=10)
    model = TransformerLM(config.model)
    save_checkpoint(model, build_optimizer(model, config), 5, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError) as err:
        train(config, resume_from=tmp_path)
    assert err.value.field == str(tmp_path / "checkpoint.pt")
    assert "holds no schedule, rng, records" in str(err.value)


@pytest.mark.parametrize(("key", "value"), [("rng", {}), ("records", [5]),
                                            ("schedule", {"cuts": "x"}), ("iteration", "x")])
def test_a_checkpoint_with_a_damaged_trainer_state_is_refused_naming_it(
        byte_dataset: Path, tmp_path: Path, key: str, value: object) -> None:
    config = tiny_config(byte_dataset, total_iters=10)
    train(config, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    torch.save({**state, key: value}, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError) as err:
        train(config, resume_from=tmp_path)
    assert err.value.field == str(tmp_path / "checkpoint.pt")
    assert "holds a damaged schedule, RNG state or records" in str(err.value)


@pytest.mark.parametrize("iteration", [-5, 11, 10**30])
def test_a_checkpoint_past_the_configs_steps_is_refused_naming_it(
        byte_dataset: Path, tmp_path: Path, iteration: int) -> None:
    """An iteration below 0 divided by zero in the schedule; one past the end "completed"."""
    config = tiny_config(byte_dataset, total_iters=10)
    train(config, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    torch.save({**state, "iteration": iteration}, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError) as err:
        train(config, resume_from=tmp_path)
    assert err.value.field == str(tmp_path / "checkpoint.pt")
    assert f"holds iteration {iteration}, outside the 0..10 steps of this config" in str(err.value)


def test_a_checkpoint_whose_saved_config_is_invalid_is_named(byte_dataset: Path,
                                                             tmp_path: Path) -> None:
    train(tiny_config(byte_dataset, total_iters=10), checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    saved = {k: v for k, v in state["config"].items() if k != "total_iters"}
    torch.save({**state, "config": saved}, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError) as err:
        checkpoint_config(tmp_path)
    assert err.value.field == str(tmp_path / "checkpoint.pt")
    assert "holds a config that is not valid (total_iters: set total_iters or total_tokens)" in \
        str(err.value)


def test_resume_takes_hyperparameters_from_the_config(byte_dataset: Path, tmp_path: Path) -> None:
    config = tiny_config(byte_dataset, beta2=0.99, weight_decay=0.1)
    train(config, on_eval=lambda r: r.step >= 20, checkpoint_dir=tmp_path)
    perturbed = replace(config, beta2=0.9, weight_decay=0.3)
    train(perturbed, checkpoint_dir=tmp_path, resume_from=tmp_path)
    groups = read_checkpoint(tmp_path)["optimizer"]["param_groups"]
    assert {g["betas"][1] for g in groups} == {0.9}
    assert max(g["weight_decay"] for g in groups) == 0.3


@pytest.mark.parametrize(("name", "flops"), [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA GH200 480GB", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L40", 181e12),
    ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12), ("NVIDIA A10G", 70e12),
    ("NVIDIA RTX A1000", None), ("Tesla T4", None)])
def test_mfu_peak_is_looked_up_by_whole_words_of_the_gpu_name(name: str, flops: float) -> None:
    """A variant is not taken for its family (H100 PCIe), nor one GPU for another whose name
    starts alike (L40 for L4, RTX A1000 for A100)."""
    assert peak_flops_of(name) == flops


def test_a_compiled_run_takes_the_graphs_an_earlier_run_of_its_shape_compiled(
        byte_dataset: Path, monkeypatch, request) -> None:
    """A Ray actor runs trial after trial: one that differs in hyperparameters of the optimizer,
    the schedule or the loss alone compiles nothing and trains as the first; another batch size
    or p_drop compiles graphs of its own; a new shape past the graphs a process keeps resets
    torch's compiler, so that no run goes eager past its recompile limit. Its last evaluation
    measures the gradient noise scale, with the eager module."""
    from torch._dynamo.utils import counters

    import model.compiled

    def graphs(config: TrainConfig) -> tuple[int, list]:
        counters.clear()
        records = train(config).records
        assert all(math.isfinite(r.val_loss) for r in records)
        assert 0 < records[-1].noise_scale < math.inf
        return counters["stats"]["unique_graphs"], losses(records)

    monkeypatch.setattr(model.compiled, "_kept", set())
    # one thread, as a trial of cpus_per_trial 1: on two, torch's compiled CPU kernels now and
    # then differ in the 7th digit from one run to the next, reused graphs or not
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    config = tiny_config(byte_dataset, compile=True, total_iters=4, warmup_iters=1,
                         eval_interval=2)
    compiled, first = graphs(config)
    assert compiled >= 1
    hyper = replace(config, lr_max=1e-2, lr_min=1e-4, warmup_iters=2, beta1=0.8, beta2=0.95,
                    eps=1e-6, weight_decay=0.3, grad_clip=0.5, label_smoothing=0.1, seed=5)
    assert graphs(hyper)[0] == 0
    assert graphs(config) == (0, first)
    assert graphs(replace(config, dropout=0.2))[0] >= 1
    monkeypatch.setattr(model.compiled, "KEPT_GRAPH_SETS", 1)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", model.compiled.GRAPHS_PER_SET)
    assert graphs(replace(config, batch_size=4))[0] >= 1  # a reset: not eager past the limit
    assert graphs(config) == (compiled, first)  # compiled again, as it was


def test_compile_auto_compiles_on_a_gpu_only(byte_dataset: Path) -> None:
    from model.compiled import compiles

    auto = tiny_config(byte_dataset)
    assert auto.compile == "auto"
    assert compiles(auto, torch.device("cuda")) and not compiles(auto, torch.device("cpu"))
    assert compiles(replace(auto, compile=True), torch.device("cpu"))
    assert not compiles(replace(auto, compile=False), torch.device("cuda"))


def test_an_fp32_gpu_run_has_no_mfu_against_the_bf16_peak(byte_dataset: Path) -> None:
    """A known GPU's peak is its bf16 one: a run without bf16 (`fast: false`) is not measured
    against it, unless the config gives a peak."""
    from model.train import peak_flops

    fp32 = tiny_config(byte_dataset, fast=False)
    assert peak_flops(fp32, torch.device("cuda")) is None
    assert peak_flops(replace(fp32, peak_flops=6.7e13), torch.device("cuda")) == 6.7e13


def test_a_step_reads_back_its_loss_alone_once_the_next_step_is_queued(byte_dataset: Path) -> None:
    """Each read of a tensor's value waits for the GPU to finish what is queued: a step reads
    its loss alone (for the divergence check; the gradient norm is read at evaluations), and
    only after the next step's backward pass is queued, so the GPU is not left idle."""
    from torch.utils._python_dispatch import TorchDispatchMode

    read, backward = torch.ops.aten._local_scalar_dense.default, torch.ops.aten.silu_backward
    ops: list = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(func)
            return func(*args, **(kwargs or {}))

    def run(steps: int) -> list:  # SGD: no step counts of its own to read
        config = tiny_config(byte_dataset, optimizer="sgd", total_iters=steps, warmup_iters=1,
                             eval_interval=steps, sample_tokens=0)
        ops.clear()
        with Record():
            train(config)
        return list(ops)

    short, long = run(10), run(30)
    assert long.count(read) - short.count(read) == 20
    training = long[long.index(backward.default):]
    backwards_before_first_read = training[:training.index(read)].count(backward.default)
    assert backwards_before_first_read == 2 * 2  # two steps' SwiGLU in each of 2 layers
