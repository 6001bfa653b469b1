"""Ray's OptunaSearch, made to resume over an Optuna storage that is ahead of Tune's state, and
to tell Optuna a trial its scheduler stopped early as pruned."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from tuner.search.trial.trainable import TIME_ATTR

STOPPED_AS = ("pruned", "complete")  # how a trial stopped before its budget reaches Optuna


def stopped_early(result: dict[str, Any] | None, full_tokens: float) -> bool:
    """Whether a trial's last result ends it short of its budget (the result's `budget_tokens`,
    else `full_tokens`) with no error and no divergence: a scheduler or the study stopped it."""
    if not result or TIME_ATTR not in result or result.get("error") or result.get("diverged"):
        return False
    budget = result.get("budget_tokens") or full_tokens
    return float(result.get(TIME_ATTR, 0)) < budget


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that takes a trial its storage holds as finished as completed. A driver
    killed after telling a database a trial's end, before Tune saved its own state, resumes that
    trial, and its next result would otherwise fail the study on every resume.

    A trial stopped early (`stopped_early`) is told as PRUNED, its evaluations being its
    intermediate values (Optuna takes the last as its value); with `stopped_as="complete"`, as
    Ray tells it, COMPLETE with its last value (as a searcher saved before there was a choice)."""

    stopped_as, full_tokens = "complete", 0.0  # class defaults: a searcher pickled before them

    def __init__(self, *args: Any, full_tokens: float, stopped_as: str = "pruned",
                 **kwargs: Any) -> None:
        if stopped_as not in STOPPED_AS:
            raise ValueError(f"stopped_as must be one of {STOPPED_AS}, not {stopped_as!r}")
        super().__init__(*args, **kwargs)
        self.full_tokens, self.stopped_as = full_tokens, stopped_as

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if (self.stopped_as == "complete" or error or trial_id in self._completed_trials
                or not stopped_early(result, self.full_tokens)):
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        trial, value = self._ot_trials[trial_id], result.get(self.metric)
        try:
            if value is not None and TRAINING_ITERATION in result:
                # Tune passes a searcher no result that a stopper or scheduler stops a trial on
                with warnings.catch_warnings():  # a step it reported before a resume: kept
                    warnings.simplefilter("ignore")
                    trial.report(value, result[TRAINING_ITERATION])
            self._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # told before a kill (see the class)
        self._completed_trials.add(trial_id)
