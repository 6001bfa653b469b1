"""The loss: cross-entropy (with label smoothing) against PyTorch's, stability; perplexity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.loss import cross_entropy
from model.metrics import perplexity


def batch(scale: float = 1.0, vocab: int = 11):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, vocab, generator=g) * scale
    targets = torch.randint(0, vocab, (3, 5), generator=g)
    return logits, targets


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
def test_matches_torch_cross_entropy(eps):
    logits, targets = batch()
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), label_smoothing=eps)
    assert cross_entropy(logits, targets, eps).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_gradient_matches_torch(eps):
    logits, targets = batch()
    ours = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    cross_entropy(ours, targets, eps).backward()
    F.cross_entropy(theirs.flatten(0, 1), targets.flatten(), label_smoothing=eps).backward()
    assert torch.allclose(ours.grad, theirs.grad, atol=1e-7)


def test_label_smoothing_is_the_cross_entropy_with_the_smoothed_target():
    logits, targets = batch(vocab=4)
    eps = 0.3
    target_dist = torch.full(logits.shape, eps / 4)
    target_dist.scatter_(-1, targets.unsqueeze(-1), 1 - eps + eps / 4)
    expected = -(target_dist * torch.log_softmax(logits, -1)).sum(-1).mean()
    assert cross_entropy(logits, targets, eps).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_stable_for_huge_logits(eps):
    logits, targets = batch(scale=1e4)
    logits[0, 0] = torch.tensor([1e4, -1e4] * 5 + [1e4])
    loss = cross_entropy(logits, targets, eps)
    assert torch.isfinite(loss)
    expected = F.cross_entropy(logits.double().flatten(0, 1), targets.flatten(),
                               label_smoothing=eps)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_known_values_and_float32_result():
    vocab = 8
    uniform = torch.zeros(4, vocab, dtype=torch.bfloat16)
    targets = torch.arange(4)
    loss = cross_entropy(uniform, targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(math.log(vocab), rel=1e-6)
    confident = torch.full((4, vocab), -1e4)
    confident[torch.arange(4), targets] = 1e4
    assert cross_entropy(confident, targets).item() == pytest.approx(0.0, abs=1e-6)


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(42.0)) == pytest.approx(42.0)
    assert perplexity(1e6) == math.inf
