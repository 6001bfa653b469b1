"""Power laws y*(C) = a·C^b of the best hyperparameters in compute C = 6·N·D: a least-squares line
in log-log space through every near-optimal trial of every study, with bootstrap intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tuner.errors import UserError

MARGIN = 0.0025  # near-optimal: val_loss ≤ best·(1 + margin), as StepFun's fitting code
RESAMPLES = 1000
LEVEL = (2.5, 97.5)  # percentiles of the bootstrap: a 95% interval
FITTED = {"lr_max": "α_max", "batch_size": "B"}  # the hyperparameters fitted, by name → symbol
MIN_SIZES = 3


@dataclass(frozen=True)
class Trial:
    """One finished full-budget trial: its values, its best val_loss and its compute."""

    run_id: str
    trial_id: str
    values: dict[str, float]  # lr_max, batch_size
    val_loss: float
    compute: float  # 6·N·D FLOPs


@dataclass(frozen=True)
class Study:
    """A study's finished full-budget trials and what they share."""

    name: str
    params: int  # N, non-embedding parameters
    tokens: int  # D, tokens a trial trains (the median of its trials')
    searched: frozenset[str]  # of FITTED, those the study searched
    trials: list[Trial]
    dataset: str | None = None  # the dataset's sha256, as the study recorded it
    source: str | None = None  # the study this one is a part of: a transfer size, a fork budget

    @property
    def compute(self) -> float:
        return 6.0 * self.params * self.tokens

    @property
    def best(self) -> Trial:
        return min(self.trials, key=lambda t: t.val_loss)


@dataclass(frozen=True)
class Interval:
    """A value with its bootstrap interval."""

    value: float
    lo: float
    hi: float


@dataclass(frozen=True)
class PowerLaw:
    """y = a·C^b fitted in log-log space; `samples` holds the bootstrap's (log a, b) pairs."""

    coefficient: float  # a
    exponent: Interval  # b
    points: int
    samples: np.ndarray = field(repr=False, compare=False)

    def at(self, compute: float) -> Interval:
        """The fitted value at `compute`, with its bootstrap interval."""
        logs = self.samples[:, 0] + self.samples[:, 1] * np.log(compute)
        lo, hi = np.exp(np.percentile(logs, LEVEL))
        return Interval(self.coefficient * compute ** self.exponent.value, float(lo), float(hi))


@dataclass(frozen=True)
class Scaling:
    """The fit of each FITTED hyperparameter (None: no study searched it) and the prediction."""

    studies: list[Study]
    near: dict[str, list[Trial]]  # study name → its near-optimal trials
    laws: dict[str, PowerLaw | None]
    margin: float
    target: tuple[int, int] | None  # (N, D)

    @property
    def target_compute(self) -> float | None:
        return None if self.target is None else 6.0 * self.target[0] * self.target[1]

    def prediction(self) -> dict[str, Interval]:
        """The fitted hyperparameters at the target's compute (empty without a target)."""
        compute = self.target_compute
        return {} if compute is None else {
            name: law.at(compute) for name, law in self.laws.items() if law is not None}


def near_optimal(losses: Sequence[float], margin: float = MARGIN) -> list[int]:
    """The indices of the losses within `margin` (relative) of the lowest."""
    best = min(losses)
    return [i for i, loss in enumerate(losses) if loss <= best * (1 + margin)]


def fit_power_law(groups: Sequence[tuple[Sequence[float], Sequence[float]]],
                  resamples: int = RESAMPLES, seed: int = 0) -> PowerLaw:
    """Fit y = a·C^b to the (compute, value) points of each group (a study) by least squares in
    log-log space; resample each group's points with replacement for the exponent's interval."""
    logs = [(np.log(np.asarray(c, float)), np.log(np.asarray(y, float))) for c, y in groups]
    log_a, b = _line(np.concatenate([c for c, _ in logs]), np.concatenate([y for _, y in logs]))
    rng = np.random.default_rng(seed)
    samples = np.empty((resamples, 2))
    for k in range(resamples):
        picks = [rng.integers(len(c), size=len(c)) for c, _ in logs]
        samples[k] = _line(np.concatenate([c[i] for (c, _), i in zip(logs, picks)]),
                           np.concatenate([y[i] for (_, y), i in zip(logs, picks)]))
    lo, hi = np.percentile(samples[:, 1], LEVEL)
    return PowerLaw(float(np.exp(log_a)), Interval(b, float(lo), float(hi)),
                    sum(len(c) for c, _ in logs), samples)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Intercept and slope of the least-squares line through (x, y)."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def fit_scaling(studies: list[Study], margin: float = MARGIN, target: tuple[int, int] | None = None,
                resamples: int = RESAMPLES, seed: int = 0) -> Scaling:
    """Fit each FITTED hyperparameter that a study searched through the studies' near-optimal
    trials; UserError for fewer than three sizes, or α_max searched in none."""
    sizes = distinct_sizes(studies)
    if len(sizes) < MIN_SIZES:
        raise UserError(f"a fit needs at least {MIN_SIZES} sizes; got {len(sizes)}: "
                        + ", ".join(f"{s.name} (C = {s.compute:.3g} FLOPs)" for s in studies))
    near = {s.name: [s.trials[i] for i in near_optimal([t.val_loss for t in s.trials], margin)]
            for s in studies}
    laws: dict[str, PowerLaw | None] = {}
    for name, sym in FITTED.items():
        searched = [s for s in studies if name in s.searched]
        if searched and len(distinct_sizes(searched)) < MIN_SIZES:
            raise UserError(f"{sym} ({name}) is searched in {len(searched)} of the studies "
                            f"({', '.join(s.name for s in searched)}): a fit of it needs at least "
                            f"{MIN_SIZES} sizes that search it")
        laws[name] = fit_power_law([([t.compute for t in near[s.name]],
                                     [t.values[name] for t in near[s.name]])
                                    for s in searched], resamples, seed) if searched else None
    if laws["lr_max"] is None:
        raise UserError("no study searched α_max (lr_max): there is nothing to fit")
    return Scaling(studies, near, laws, margin, target)


def distinct_sizes(studies: list[Study], tolerance: float = 0.01) -> list[float]:
    """The studies' computes, those within `tolerance` (relative) of a smaller one left out."""
    sizes: list[float] = []
    for compute in sorted(s.compute for s in studies):
        if not sizes or compute > sizes[-1] * (1 + tolerance):
            sizes.append(compute)
    return sizes
