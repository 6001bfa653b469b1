"""Learning-rate schedules: linear warmup composed with cosine, SGDR restarts, step, exponential,
reduce-on-plateau, constant or WSD (warmup-stable-decay); the trainer asks `LRSchedule.lr(t)`
every step and calls `set_lr`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from model.config import TrainConfig, fraction_of

if TYPE_CHECKING:  # reading a schedule (`tuner report`'s plot) needs no torch
    import torch


def cosine_lr(t: int, lr_max: float, lr_min: float, warmup_iters: int, cycle_iters: int) -> float:
    """CS336 cosine with linear warmup: α_max·t/T_w, then cosine to α_min at T_cycle, then α_min."""
    if t < warmup_iters:
        return lr_max * t / warmup_iters
    if t <= cycle_iters:
        progress = (t - warmup_iters) / (cycle_iters - warmup_iters)
        return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * progress))
    return lr_min


def wsd_decay_lr(progress: float, lr_max: float, lr_min: float, shape: str) -> float:
    """WSD's α at `progress` ∈ [0, 1] through its decay: α_max at 0, α_min at 1."""
    remaining = 1 - math.sqrt(progress) if shape == "1-sqrt" else 1 - progress
    return lr_min + (lr_max - lr_min) * remaining


def _restart_position(s: float, first: float, mult: float) -> tuple[float, float]:
    """(steps into the current cycle, its length) for SGDR cycles of length first·mult^i."""
    if mult == 1.0:
        return s % first, first

    def start(k: int) -> float:  # the first step of cycle k
        return first * (mult**k - 1) / (mult - 1)

    i = int(math.log1p(s * (mult - 1) / first) / math.log(mult))
    i += (start(i + 1) <= s) - (start(i) > s)  # correct float rounding at a boundary
    return s - start(i), first * mult**i


@dataclass
class LRSchedule:
    """α_t for every step t (warmup then the chosen shape); plateau also learns from `observe`."""

    kind: str
    lr_max: float
    lr_min: float
    warmup_iters: int
    cycle_iters: int
    cycle_mult: float = 1.0
    step_size: int = 1000
    step_gamma: float = 0.1
    exp_rate: float = 0.1
    exp_steps: int = 1
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    plateau_cooldown: int = 0
    total_iters: int = 1
    decay_fraction: float = 0.2
    decay_shape: str = "1-sqrt"
    decay_iters: int = field(init=False)
    plateau_lr: float = field(init=False)
    cuts: int = field(init=False, default=0)
    best: float = field(init=False, default=math.inf)
    bad_evals: int = field(init=False, default=0)
    cooldown_left: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.plateau_lr = self.lr_max
        self.decay_iters = fraction_of(self.decay_fraction, self.total_iters)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> LRSchedule:
        """The schedule of `cfg` (T_cycle and T_exp default to T_total, α_min to 0.1·α_max)."""
        return cls(kind=cfg.schedule, lr_max=cfg.lr_max, lr_min=cfg.resolved_lr_min,
                   warmup_iters=cfg.warmup_iters, cycle_iters=cfg.cycle_iters or cfg.steps,
                   cycle_mult=cfg.cycle_mult, step_size=cfg.step_size, step_gamma=cfg.step_gamma,
                   exp_rate=cfg.exp_rate, exp_steps=cfg.exp_steps or cfg.steps,
                   plateau_factor=cfg.plateau_factor, plateau_patience=cfg.plateau_patience,
                   plateau_cooldown=cfg.plateau_cooldown, total_iters=cfg.steps,
                   decay_fraction=cfg.decay_fraction, decay_shape=cfg.decay_shape)

    def lasting(self, total_iters: int) -> LRSchedule:
        """This schedule for a run of `total_iters` steps (a WSD fork's own, shorter run)."""
        return replace(self, total_iters=total_iters)

    def lr(self, t: int) -> float:
        """α_t after t completed steps."""
        if self.kind == "cosine":
            return cosine_lr(t, self.lr_max, self.lr_min, self.warmup_iters, self.cycle_iters)
        if t < self.warmup_iters:
            return self.lr_max * t / self.warmup_iters
        s = t - self.warmup_iters
        if self.kind == "constant":
            return self.lr_max
        if self.kind == "cosine_restarts":
            u, length = _restart_position(s, self.cycle_iters - self.warmup_iters, self.cycle_mult)
            cos = math.cos(math.pi * u / length)
            return self.lr_min + 0.5 * (self.lr_max - self.lr_min) * (1 + cos)
        if self.kind == "step":
            return self.lr_max * self.step_gamma ** (s // self.step_size)
        if self.kind == "exponential":
            return self.lr_max * self.exp_rate ** (s / self.exp_steps)
        if self.kind == "plateau":
            return self.plateau_lr
        if self.kind == "wsd":
            into_decay = t - (self.total_iters - self.decay_iters)
            if into_decay <= 0:
                return self.lr_max
            progress = min(into_decay / self.decay_iters, 1.0)
            return wsd_decay_lr(progress, self.lr_max, self.lr_min, self.decay_shape)
        raise ValueError(f"unknown schedule {self.kind!r}")

    def observe(self, val_loss: float, t: int) -> None:
        """Feed the validation loss after t steps; plateau cuts its lr after more than `patience`
        evaluations without improvement, then ignores `cooldown` evaluations (ReduceLROnPlateau's
        rule). Evaluations inside the warmup do not count."""
        if self.kind != "plateau" or t < self.warmup_iters:
            return
        if val_loss < self.best:
            self.best, self.bad_evals = float(val_loss), 0
        else:
            self.bad_evals += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_evals = 0
        if self.bad_evals > self.plateau_patience:
            self._cut()
            self.cooldown_left, self.bad_evals = self.plateau_cooldown, 0

    def _cut(self) -> None:
        self.cuts += 1
        self.plateau_lr = max(self.plateau_lr * self.plateau_factor, self.lr_min)

    def state_dict(self) -> dict[str, float | int]:
        """The state `observe` changes, as plain python numbers (safe for weights_only loading)."""
        return {"cuts": self.cuts, "best": self.best, "bad_evals": self.bad_evals,
                "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; the cuts apply to this schedule's α_max and α_min,
        which a resume may change (PBT)."""
        self.plateau_lr, self.cuts = self.lr_max, 0
        if "cuts" in state:
            cuts = int(state["cuts"])
            if cuts < 0:
                raise ValueError(f"cuts {cuts} is below 0")
            while self.cuts < cuts and self.plateau_lr > self.lr_min:  # at α_min a cut changes
                self._cut()  # nothing: a damaged count must not loop for ever
            self.cuts = cuts
        else:  # a checkpoint written before cuts were counted holds its lr: count them from it
            while self.plateau_lr > max(float(state["plateau_lr"]), self.lr_min):
                self._cut()
        self.best = float(state["best"])
        self.bad_evals = int(state["bad_evals"])
        self.cooldown_left = int(state["cooldown_left"])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write `lr` into every param group of `optimizer`, times the group's `lr_scale` (μP's)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
