"""The gradient noise scale (model.noise_scale): its estimates on a problem whose |G|² and tr(Σ)
are known, and a run measuring it trains bit for bit as one that does not."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_train import tiny_config

from model.checkpoint import read_checkpoint
from model.noise_scale import GradientNorms, NoiseScale, gradient_norms
from model.train import train

DIM, SIGMA = 8, 0.5  # the linear problem's inputs and its targets' noise


def linear_problem(delta: torch.Tensor):
    """Least squares y = w*·x + ε (x ~ N(0, I), ε ~ N(0, σ²)) at w = w* + δ: one example's
    gradient (w·x − y)·x has mean G = δ and covariance Σ = |δ|²·I + δδᵀ + σ²·I, so |G|² = |δ|²
    and tr(Σ) = (d + 1)·|δ|² + d·σ²."""
    model = torch.nn.Linear(DIM, 1, bias=False)
    target = torch.linspace(-1, 1, DIM)
    with torch.no_grad():
        model.weight.copy_(target + delta)

    def draw(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch, DIM, generator=generator)
        return x, x @ target + SIGMA * torch.randn(batch, generator=generator)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(x).squeeze(-1) - y).pow(2).mean()

    grad_sq = float(delta.pow(2).sum())
    return model, draw, loss_of, grad_sq, (DIM + 1) * grad_sq + DIM * SIGMA**2


@pytest.mark.parametrize("batch", [16, 7])  # 7: micro-batches of 2, 2, 2 and 1
def test_the_estimates_recover_a_known_noise_scale(batch):
    torch.manual_seed(0)
    model, draw, loss_of, grad_sq, trace = linear_problem(torch.full((DIM,), 0.3))
    generator = torch.Generator().manual_seed(1)
    measured = [gradient_norms(model, loss_of, *draw(batch, generator)) for _ in range(1000)]
    assert measured[0].b_big == batch and measured[0].b_small == batch / 4
    # The means' standard errors are 2.7% and 4.8% of |G|² (B 16, 7), 1.7% and 2.2% of tr(Σ);
    # a bias such as |G_big|² taken for |G|² (+74%) or B//k for b_small (−50%) is far outside.
    assert statistics.mean(m.grad_sq for m in measured) == pytest.approx(grad_sq, rel=0.15)
    assert statistics.mean(m.trace for m in measured) == pytest.approx(trace, rel=0.08)
    assert model.weight.grad is None  # the parameters' .grad untouched


def test_the_formulas_are_mcCandlishs_appendix_a_and_b_simple_the_ratio_of_their_emas():
    norms = GradientNorms(small=3.0, big=1.2, b_small=2, b_big=8)
    assert norms.grad_sq == pytest.approx((8 * 1.2 - 2 * 3.0) / 6)
    assert norms.trace == pytest.approx((3.0 - 1.2) / (1 / 2 - 1 / 8))
    later = GradientNorms(small=2.0, big=1.0, b_small=2, b_big=8)
    smoothed = NoiseScale()
    smoothed.add(norms)
    assert smoothed.sequences == pytest.approx(norms.trace / norms.grad_sq)
    smoothed.add(later)
    assert smoothed.count == 2 and smoothed.sequences == pytest.approx(
        (norms.trace + 2 * later.trace) / (norms.grad_sq + 2 * later.grad_sq))  # newest: 2×


def test_a_batch_of_one_measures_nothing_and_noise_hiding_the_gradient_is_infinite():
    model, draw, loss_of, _, _ = linear_problem(torch.zeros(DIM))
    assert gradient_norms(model, loss_of, *draw(1, torch.Generator().manual_seed(0))) is None
    unmeasured = NoiseScale()
    assert unmeasured.sequences is None
    unmeasured.add(GradientNorms(small=2.0, big=0.1, b_small=1, b_big=4))  # |G|² estimate < 0
    assert unmeasured.sequences == math.inf


def test_measuring_leaves_training_bit_for_bit_as_it_was(byte_dataset: Path, tmp_path: Path):
    """Dropout draws from the RNG the measurement forks, and its batch is the next one the run
    draws: losses, the final parameters and the optimizer's state are equal with it on or off."""
    torch.set_num_threads(1)
    config = tiny_config(byte_dataset, dropout=0.1, total_iters=30)
    off = train(replace(config, noise_interval=None), checkpoint_dir=tmp_path / "off")
    on = train(replace(config, noise_interval=1), checkpoint_dir=tmp_path / "on")
    assert [(r.train_loss, r.val_loss, r.grad_norm) for r in on.records] == [
        (r.train_loss, r.val_loss, r.grad_norm) for r in off.records]
    trained = [read_checkpoint(tmp_path / name) for name in ("off", "on")]
    for key in ("model", "optimizer", "rng"):
        assert _flat(trained[0][key]) == _flat(trained[1][key]), key
    assert all(r.noise_scale is None for r in off.records)
    noise = [r.noise_scale for r in on.records]
    assert all(0 < n < math.inf for n in noise), noise
    assert [r.noise_scale_tokens for r in on.records] == [n * 32 for n in noise]
    assert "noise_scale" in on.records[0].as_metrics()
    assert "noise_scale" not in off.records[0].as_metrics()


def test_by_default_the_last_evaluation_and_one_past_each_interval_measure(byte_dataset: Path):
    config = tiny_config(byte_dataset, total_iters=45, eval_interval=10, noise_interval=20)
    assert [r.step for r in train(config).records if r.noise_scale is not None] == [20, 40, 45]
    assert tiny_config(byte_dataset).noise_interval == 100


def test_a_resumed_run_measures_as_the_uninterrupted_one(byte_dataset: Path, tmp_path: Path):
    config = tiny_config(byte_dataset, dropout=0.1, noise_interval=1)
    full = train(config)
    train(config, on_eval=lambda r: r.step >= 20, checkpoint_dir=tmp_path)
    resumed = train(config, resume_from=tmp_path)
    assert [r.noise_scale for r in resumed.records] == [r.noise_scale for r in full.records]


def _flat(state) -> list:
    """A state's tensors and numbers in order, for an exact comparison."""
    if isinstance(state, dict):
        return [(k, _flat(v)) for k, v in sorted(state.items(), key=lambda kv: str(kv[0]))]
    if isinstance(state, (list, tuple)):
        return [_flat(v) for v in state]
    if isinstance(state, torch.Tensor):
        return state.tolist()
    return state
