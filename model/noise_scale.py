"""The gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018, "An Empirical Model of
Large-Batch Training", appendix A): measured on one training batch of b_big sequences split into k
micro-batches of b_small = b_big/k, whose gradients' squared norms give unbiased estimates of |G|²
and tr(Σ), Σ being one sequence's gradient covariance; B_simple is the ratio of their EMAs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

# The most micro-batches a measured batch is split into. On the quickstart the estimates spread
# as much over batches with 2, 4 or 8 (docs/benchmarks.md), and each costs more on a CPU.
MICRO_BATCHES = 4
SMOOTHING = 0.5  # each EMA's weight on the measurements before the newest


@dataclass(frozen=True)
class GradientNorms:
    """One measurement: `small`, the mean squared norm of the k micro-batch gradients (weighted by
    their sizes, which differ by one at most: b_small = b_big/k on average), and `big`, the
    squared norm of the whole batch's gradient, of b_big sequences."""

    small: float
    big: float
    b_small: float
    b_big: int

    @property
    def grad_sq(self) -> float:
        """|G|²: (b_big·|G_big|² − b_small·|G_small|²)/(b_big − b_small)."""
        return (self.b_big * self.big - self.b_small * self.small) / (self.b_big - self.b_small)

    @property
    def trace(self) -> float:
        """tr(Σ): (|G_small|² − |G_big|²)/(1/b_small − 1/b_big)."""
        return (self.small - self.big) / (1 / self.b_small - 1 / self.b_big)


@dataclass
class NoiseScale:
    """Exponential moving averages of the |G|² and tr(Σ) measured so far; B_simple is their
    ratio (the EMAs' bias towards 0 cancels in it)."""

    grad_sq: float = 0.0
    trace: float = 0.0
    count: int = 0

    def add(self, norms: GradientNorms) -> None:
        """Take in one measurement."""
        self.grad_sq = SMOOTHING * self.grad_sq + (1 - SMOOTHING) * norms.grad_sq
        self.trace = SMOOTHING * self.trace + (1 - SMOOTHING) * norms.trace
        self.count += 1

    @property
    def sequences(self) -> float | None:
        """B_simple in sequences: None before any measurement, inf where the noise hides |G|²
        (its estimate not above 0: B_simple is far above the measured batch)."""
        if not self.count:
            return None
        return self.trace / self.grad_sq if self.grad_sq > 0 else math.inf

    def state_dict(self) -> dict[str, float]:
        return asdict(self)


def gradient_norms(model: torch.nn.Module, loss_of: Callable[[torch.Tensor, torch.Tensor],
                                                            torch.Tensor],
                   x: torch.Tensor, y: torch.Tensor) -> GradientNorms | None:
    """Measure the batch (x, y) in min(B, MICRO_BATCHES) micro-batches, `loss_of(x, y)` the mean
    loss of one; None for a batch of one. The parameters' .grad, the optimizer and every RNG are
    left as they were (dropout draws from a forked RNG): the run trains as it would without it."""
    size, k = len(x), min(len(x), MICRO_BATCHES)
    if k < 2:
        return None
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]  # Σ b_i·g_i: b_big times the batch's gradient
    small = torch.zeros((), device=x.device)  # Σ b_i·|g_i|²
    cuda = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        for xs, ys in zip(x.tensor_split(k), y.tensor_split(k)):
            grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(
                torch.autograd.grad(loss_of(xs, ys), params, allow_unused=True), params)]
            small += len(xs) * torch.stack([g.pow(2).sum() for g in grads]).sum()
            torch._foreach_add_(total, grads, alpha=len(xs))
    big = torch.stack([t.pow(2).sum() for t in total]).sum() / size**2
    return GradientNorms(float(small) / size, float(big), size / k, size)
