"""μP, the maximal update parametrization (Yang et al., Tensor Programs V), for Adam: the width
rules under which the best α, β1, β2 and λ found at a small width stay the best at a large one.

Each rule is a factor of the width ratio m = d_model / mup_base_d_model and is 1 at m = 1, so μP
at its base width is SP. Initialisation needs no rule here: SP's variances, 2/(in+out) for the
hidden matrices and 1 for the embedding, already scale as μP asks (1/fan_in and constant).
"""

from __future__ import annotations

import math

from model.config import ModelConfig


def width_ratio(config: ModelConfig) -> float:
    """m = d_model / base width under μP; 1 under SP."""
    if config.parametrization != "mup":
        return 1.0
    return config.d_model / (config.mup_base_d_model or config.d_model)


def attention_divisor(config: ModelConfig) -> float | None:
    """What q·k is divided by: √d_head·√(d_head/d_head_base), growing as d_head, since q and k
    become correlated under μP and their dot product grows as d_head, not √d_head. None: SP's
    √d_head."""
    if config.parametrization != "mup":
        return None
    d_head = config.d_model // config.num_heads
    return math.sqrt(d_head) * math.sqrt(width_ratio(config))


def output_multiplier(config: ModelConfig) -> float:
    """1/m on the logits: Adam moves every readout weight by about α whatever the width, so
    without it the logits' update would grow as the d_model terms it sums."""
    return 1.0 / width_ratio(config)


def hidden_lr_scale(config: ModelConfig) -> float:
    """1/m on α for a matrix whose input is the width (not the embedding or readout): its
    output's update sums fan_in coordinate updates of size about α."""
    return 1.0 / width_ratio(config)


def hidden_decay_scale(config: ModelConfig) -> float:
    """m on λ for the same matrices, so that α·λ, the fraction AdamW decays them by per step,
    stays what it is at the base width (independent weight decay)."""
    return width_ratio(config)
