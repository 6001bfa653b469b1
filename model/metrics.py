"""Plain-math measures of a loss, without torch, so that reading results never imports it."""

from __future__ import annotations

import math


def perplexity(mean_loss: float) -> float:
    """exp(mean loss); inf when that overflows."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf
