"""The training loss: cross-entropy with optional label smoothing."""

from __future__ import annotations

import torch
from torch import Tensor


def cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of logits (..., V) against targets (...), in float32.

    With label smoothing ε the target is 1 − ε + ε/|V| on the true token and ε/|V| elsewhere.
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    nll = lse - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if label_smoothing:
        # −mean_j log p_j = lse − mean_j logit_j: the loss against the uniform distribution.
        uniform = lse - logits.mean(dim=-1)
        nll = (1 - label_smoothing) * nll + label_smoothing * uniform
    return nll.mean()

