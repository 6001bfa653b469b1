"""PASHA (Bohdal et al., ICLR 2023): ASHA whose maximum budget starts at its second rung and grows
by a rung whenever the top two rungs rank their trials differently, beyond the noise."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

NOISE_PERCENTILE = 90  # of the gaps between pairs of trials whose order flipped and flipped back


class Pasha(AsyncHyperBandScheduler):
    """Ray's ASHA (one bracket) with a growing top rung. A trial that reaches the current top
    rung below the full budget stops there, as at ASHA's last rung; after each new rung record,
    the trials of the top rung are ranked there and at the rung below, and the top rises by one
    rung when a trial leaves its group of the rung below: the trials within ε of it there, ε the
    90th percentile of the gaps between pairs of trials whose order flipped and flipped back
    between the two rungs (noise, as the paper estimates it). Trials it stopped below a top that
    later rose stay stopped: Tune's trials are stopped, not paused (`max_concurrent` works)."""

    def __init__(self, time_attr: str, metric: str, mode: str, max_t: float,
                 grace_period: float, reduction_factor: float) -> None:
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor)
        below = sorted(m for m, _ in self._brackets[0]._rungs if m < max_t)
        self.levels = [*below, max_t]  # the rungs' tokens, the full budget last
        self.top = min(1, len(self.levels) - 1)  # index of the current maximum budget
        self.epsilon = 0.0
        self.curves: dict[str, dict[float, float]] = {}  # trial id -> tokens -> reward

    @property
    def max_budget(self) -> float:
        """Tokens a trial trains at most now."""
        return self.levels[self.top]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        time = result[self._time_attr]
        self.curves.setdefault(trial.trial_id, {})[time] = self._metric_op * result[self._metric]
        before = self._records()
        action = super().on_trial_result(tune_controller, trial, result)
        if self._records() != before:
            self._grow()
        if action == TrialScheduler.CONTINUE and time >= self.max_budget:
            self._num_stopped += 1
            return TrialScheduler.STOP
        return action

    def _records(self) -> int:
        return sum(len(recorded) for _, recorded in self._brackets[0]._rungs)

    def _rung(self, level: float) -> dict[str, float]:
        return next(recorded for milestone, recorded in self._brackets[0]._rungs
                    if milestone == level)

    def _grow(self) -> None:
        """Raise the top by a rung if the top two rungs rank the top rung's trials apart."""
        if self.top == 0 or self.top == len(self.levels) - 1:
            return
        low, high = self.levels[self.top - 1], self.levels[self.top]
        reached = {i: self.curves[i] for i in self._rung(low) if i in self.curves}
        self.epsilon = noise(reached, low, high, self.epsilon)
        if not consistent(self._rung(high), self._rung(low), self.epsilon):
            self.top += 1


def consistent(top: dict[str, float], below: dict[str, float], epsilon: float) -> bool:
    """Whether the trials of the `top` rung (id -> reward, higher better) keep their ranks at the
    rung `below`, softly: the i-th best at the top is within ε, at the rung below, of the i-th
    best of them there (ε counts only once two trials reached the top rung)."""
    ids = sorted(top, key=lambda i: (-top[i], i))
    ranked = sorted(ids, key=lambda i: (-below[i], i))
    gap = epsilon if len(ranked) >= 2 else 0.0
    return all(abs(below[trial] - below[ranked[place]]) <= gap for place, trial in enumerate(ids))


def noise(curves: dict[str, dict[float, float]], low: float, high: float,
          epsilon: float) -> float:
    """ε: the 90th percentile of the gaps between two trials' rewards at the latest evaluation in
    (low, high] both reached, over the pairs whose order there was reversed at an earlier
    evaluation and then restored; `epsilon` unchanged when no pair did."""
    gaps = []
    for first, second in itertools.combinations(sorted(curves), 2):
        a, b = curves[first], curves[second]
        shared = sorted(set(a) & set(b), reverse=True)
        inside = [time for time in shared if low < time <= high]
        if not inside:
            continue
        latest = inside[0]
        order, flipped = a[latest] > b[latest], False
        for time in shared[shared.index(latest) + 1:]:
            if (a[time] > b[time]) != order:
                flipped = True
            elif flipped:
                gaps.append(abs(a[latest] - b[latest]))
                break
    return float(np.percentile(gaps, NOISE_PERCENTILE)) if gaps else epsilon
