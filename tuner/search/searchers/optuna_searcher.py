"""Ray's OptunaSearch, made to resume over an Optuna storage that is ahead of Tune's state."""

from __future__ import annotations

from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that takes a trial its storage holds as finished as completed. A driver
    killed after telling a database a trial's end, before Tune saved its own state, resumes that
    trial, and its next result would otherwise fail the study on every resume."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)
