"""The one-epoch top-K baseline (Egele et al. 2023, "Is one epoch all you need for multi-fidelity
HPO?"): every trial trains a small budget, and only the K best there train on to the end."""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler


class TopK(FIFOScheduler):
    """At its first evaluation at or past `budget` tokens a trial goes on iff its val_loss is
    among the `k` best recorded there so far, its own included (a tie goes to the trial recorded
    first); it is stopped otherwise. Asynchronous, as Tune runs trials: the first k trials all go
    on, and each later one only if it beats the k-th best so far, so about k·(1 + ln(n/k)) of n
    trials train to the end, not k."""

    def __init__(self, time_attr: str, metric: str, mode: str, budget: float, k: int) -> None:
        super().__init__()
        self._time_attr, self._metric, self.budget, self.k = time_attr, metric, budget, k
        self._sign = -1.0 if mode == "min" else 1.0
        self.recorded: dict[str, float] = {}  # trial id -> reward at the budget, higher better

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        time = result.get(self._time_attr)
        if time is None or self._metric not in result or time < self.budget \
                or trial.trial_id in self.recorded:  # decided at its first evaluation there
            return TrialScheduler.CONTINUE
        reward = self._sign * result[self._metric]
        better = sum(value >= reward for value in self.recorded.values())  # ties: the earlier
        self.recorded[trial.trial_id] = reward
        return TrialScheduler.CONTINUE if better < self.k else TrialScheduler.STOP

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.recorded, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.recorded = pickle.load(file)
