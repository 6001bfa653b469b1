"""μP in the trainer: at its base width it is SP, each rule scales as written, bad settings are
named (real torch training on tiny models, CPU)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model import mup
from model.config import ConfigError, ModelConfig, TrainConfig
from model.layers import TransformerLM
from model.optim import build_optimizer
from model.schedules import set_lr
from model.train import train


def config(dataset: Path, d_model: int = 32, **model: object) -> TrainConfig:
    shape = ModelConfig(vocab_size=256, context_length=32, d_model=d_model, num_layers=2,
                        num_heads=4, **model)
    return TrainConfig(model=shape, data=str(dataset), lr_max=3e-3, warmup_iters=5,
                       total_iters=20, batch_size=8, eval_interval=10, eval_windows=8,
                       device="cpu", seed=3, weight_decay=0.1, dropout=0.1)


def losses(cfg: TrainConfig) -> list[tuple[float, float]]:
    return [(r.train_loss, r.val_loss) for r in train(cfg).records]


def test_mup_at_its_base_width_is_sp_exactly(byte_dataset: Path) -> None:
    sp = config(byte_dataset)
    assert losses(replace(sp, model=replace(sp.model, parametrization="mup"))) == losses(sp)
    based = replace(sp.model, parametrization="mup", mup_base_d_model=32)
    assert losses(replace(sp, model=based)) == losses(sp)


def test_the_base_width_is_recorded_as_a_number_that_a_wider_copy_keeps() -> None:
    """μP's base defaults to the config's own d_model, written down: a study's best trial
    exported at 64 and set to d_model 512 trains 512 wide under μP from 64, not as SP."""
    narrow = ModelConfig(vocab_size=256, d_model=64, num_heads=4, parametrization="mup")
    assert narrow.mup_base_d_model == 64
    wide = ModelConfig(**{**narrow.__dict__, "d_model": 512, "d_ff": None})
    assert mup.width_ratio(wide) == 8
    assert ModelConfig(vocab_size=256, d_model=64, num_heads=4).mup_base_d_model is None  # SP


def test_each_rule_scales_with_the_width_ratio(byte_dataset: Path) -> None:
    """At 4x the base width: hidden matrices step at α/4 and decay at 4λ (α·λ kept), the
    embedding, readout and gains at α and λ; logits times 1/4; attention divided by d_head/√d_0."""
    wide = config(byte_dataset, d_model=128, parametrization="mup", mup_base_d_model=32)
    model = TransformerLM(wide.model)
    optimizer = build_optimizer(model, wide)
    set_lr(optimizer, 1e-3)
    hidden = {id(p) for p in model.hidden_matrices()}
    assert len(hidden) == 2 * 7  # q, k, v, output; w1, w2, w3 in each of the 2 blocks
    for group in optimizer.param_groups:
        inner = {id(p) in hidden for p in group["params"]}
        assert len(inner) == 1  # a group holds hidden matrices or none
        if inner == {True}:
            assert group["lr"] == pytest.approx(1e-3 / 4)
            assert group["weight_decay"] == pytest.approx(0.1 * 4)
        else:
            assert group["lr"] == 1e-3 and group["weight_decay"] in (0.1, 0.0)
    assert model.output_multiplier == 0.25
    d_head, d_head_base = 128 // 4, 32 // 4
    assert mup.attention_divisor(wide.model) == pytest.approx(d_head / d_head_base ** 0.5)
    assert model.layers[0].attn.divisor == mup.attention_divisor(wide.model)


def test_sp_keeps_one_step_size_and_no_multiplier(byte_dataset: Path) -> None:
    sp = config(byte_dataset, d_model=128)
    model = TransformerLM(sp.model)
    optimizer = build_optimizer(model, sp)
    assert all("lr_scale" not in group for group in optimizer.param_groups)
    assert model.output_multiplier == 1.0 and model.layers[0].attn.divisor is None


def test_frozen_norm_gains_stay_at_one(byte_dataset: Path, tmp_path: Path) -> None:
    frozen = config(byte_dataset, parametrization="mup", mup_norm_gains="frozen")
    train(frozen, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    gains = [name for name in state if name.endswith(("ln1.weight", "ln2.weight",
                                                      "ln_final.weight"))]
    assert len(gains) == 5 and all(torch.equal(state[n], torch.ones(32)) for n in gains)
    trained = config(byte_dataset, parametrization="mup")
    train(trained, checkpoint_dir=tmp_path / "trained")
    state = torch.load(tmp_path / "trained" / "checkpoint.pt", weights_only=True)["model"]
    assert not torch.equal(state["ln_final.weight"], torch.ones(32))


@pytest.mark.parametrize(("change", "field"), [
    ({"optimizer": "sgd"}, "model.parametrization"),
    ({"model": {"mup_base_d_model": 30}}, "model.mup_base_d_model"),
])
def test_a_setting_mup_cannot_follow_is_named(byte_dataset: Path, change: dict,
                                              field: str) -> None:
    cfg = config(byte_dataset, parametrization="mup")
    model = replace(cfg.model, **change.pop("model", {}))
    with pytest.raises(ConfigError) as err:
        replace(cfg, model=model, **change).validate()
    assert err.value.field == field
