"""An α range test (Smith, arXiv 1506.01186; fastai's and Lightning's lr_find): one short run of a
config whose α grows exponentially each step until the loss diverges, and the α_max range read
off its loss-against-α curve."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from model.config import ConfigError, TrainConfig

# The sweep: 6 decades, 28 steps a decade. Below 1e-5 no optimizer here moves the weights
# measurably in a sweep's steps: starting lower costs tokens and changes no range.
START_LR, END_LR, STEPS = 1e-5, 10.0, 170
NOISE_STEPS = 200  # `tuner probe`'s run at the suggested α that measures B_simple, after the sweep
SMOOTHING = 0.9  # the loss's EMA: a time constant of 10 steps, a third of a decade of α
STOP_FACTOR = 4.0  # diverged: the smoothed loss above 4× its minimum (Lightning's rule)
MIN_FALL = 0.05  # a curve whose smoothed loss never falls 5% below its start never decreased
LO_SLOPE = 0.5  # the range's low end: where the loss first falls at half its steepest rate


@dataclass
class ProbePoint:
    """One step of the sweep: its α, the batch's loss and the loss's running (causal) EMA."""

    step: int
    lr: float
    loss: float
    smoothed: float


@dataclass
class ProbeCurve:
    """The sweep as it ran: `diverged` when it stopped there, else it reached the last α."""

    points: list[ProbePoint]
    diverged: bool
    tokens: int
    num_params: int


@dataclass
class ProbeRange:
    """What the curve says of α_max: the range [lo, hi], or `problem` and what to change."""

    lo: float | None = None
    hi: float | None = None
    steepest: float | None = None  # α where the smoothed loss falls fastest against log α
    lowest: float | None = None  # α where the smoothed loss is lowest
    problem: str | None = None  # diverged_at_once | never_decreased | never_turned_up
    advice: str = ""


def lr_probe(config: TrainConfig, start: float = START_LR, end: float = END_LR,
             steps: int = STEPS, on_step: Callable[[ProbePoint], None] | None = None
             ) -> ProbeCurve:
    """Train `config`'s model at its batch size, optimizer and clipping with α = start·(end/
    start)^(t/(steps−1)) at step t (its schedule and budget unused), stopping once the loss
    diverges (not finite, or its EMA above STOP_FACTOR× its lowest)."""
    from model.token_files import Dataset  # torch: imported once a sweep runs, not with the command
    from model.train import (
        autocast_for,
        configure_backends,
        forward_backward,
        resolve_device,
        seeded_start,
        update,
    )

    config.validate()
    if not 0 < start < end:
        raise ConfigError("start", f"the sweep's α must grow: start {start} and end {end}")
    if steps < 2:
        raise ConfigError("steps", f"a sweep needs 2 steps or more, got {steps}")
    device = resolve_device(config.device)
    dataset = Dataset.open(config.data, config.model.vocab_size, config.model.context_length)
    configure_backends(config, device)
    model, optimizer, batch_gen = seeded_start(config, device)
    autocast = autocast_for(config, device)
    ratio = (end / start) ** (1 / (steps - 1))
    points: list[ProbePoint] = []
    average, lowest, diverged = 0.0, math.inf, False
    model.train()
    for step in range(steps):
        lr = start * ratio**step
        loss = forward_backward(model, dataset, config, device, batch_gen, autocast)
        update(model, optimizer, lr, config.grad_clip)
        value = float(loss.detach())
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed = average / (1 - SMOOTHING ** (step + 1))  # without the EMA's bias to 0
        points.append(ProbePoint(step, lr, value, smoothed))
        if on_step is not None:
            on_step(points[-1])
        lowest = min(lowest, smoothed)
        if not math.isfinite(value) or smoothed > STOP_FACTOR * lowest:
            diverged = True
            break
    return ProbeCurve(points, diverged, len(points) * config.tokens_per_step, model.num_params())


def zero_phase(values: list[float], smoothing: float = SMOOTHING) -> list[float]:
    """The EMA run forwards, then backwards over its output: smoothed as the causal EMA is, but
    without its lag (which, as α grows each step, would shift every feature to a larger α)."""
    def ema(xs: list[float]) -> list[float]:
        out, average = [], 0.0
        for i, x in enumerate(xs):
            average = smoothing * average + (1 - smoothing) * x
            out.append(average / (1 - smoothing ** (i + 1)))
        return out

    return ema(ema(values)[::-1])[::-1]


def suggest_range(curve: ProbeCurve) -> ProbeRange:
    """The α_max range of a sweep: from where the loss, smoothed without lag, first falls at half
    its steepest rate against log α, to the α where it is lowest, just before it turns up; or
    why there is none."""
    finite = [p for p in curve.points if math.isfinite(p.loss)]
    if len(finite) < 3:
        return ProbeRange(problem="diverged_at_once", advice=_ADVICE["diverged_at_once"])
    lrs = [p.lr for p in finite]
    smooth = zero_phase([p.loss for p in finite])
    low = min(range(len(smooth)), key=smooth.__getitem__)
    if smooth[low] > (1 - MIN_FALL) * smooth[0]:
        problem = "diverged_at_once" if curve.diverged else "never_decreased"
        return ProbeRange(problem=problem, advice=_ADVICE[problem])
    if not curve.diverged and smooth[-1] <= smooth[low] * (1 + MIN_FALL):
        return ProbeRange(lowest=lrs[low], problem="never_turned_up",
                          advice=_ADVICE["never_turned_up"])
    # the slope against log α before the lowest point (low > 0: it fell), central differences
    slope = [(smooth[min(i + 1, low)] - smooth[max(i - 1, 0)])
             / math.log(lrs[min(i + 1, low)] / lrs[max(i - 1, 0)]) for i in range(low)]
    steep = min(range(low), key=slope.__getitem__)
    first = next(i for i in range(low) if slope[i] <= LO_SLOPE * slope[steep])
    return ProbeRange(lo=lrs[first], hi=lrs[low], steepest=lrs[steep], lowest=lrs[low])


_ADVICE = {
    "diverged_at_once": "the loss diverged before it fell: start the sweep at a lower α "
                        "(--start), or check the data and the model (a vocabulary too small for "
                        "the token ids, say)",
    "never_decreased": "the loss never fell: sweep further or for longer (--end, --steps), or "
                       "check the data (is it text the model can learn from?)",
    "never_turned_up": "the loss was still falling at the sweep's last α: sweep further "
                       "(a higher --end)",
}
