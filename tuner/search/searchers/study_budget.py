"""A study budget in compute (search.study_budget): the study ends once its trials trained a
number of tokens.

`BudgetWatch` (a Tune callback) counts the tokens the study has trained, the sum of each trial's
latest `tokens`, taken again from Tune's trials at every step (so a resumed study goes on from
what it spent before). Once they reach the budget, `BudgetSearcher` draws no more trials
(Searcher.FINISHED) and `BudgetStopper` stops each trial at its next stopping point: the first
result that reaches one of the scheduler's rungs (`stopping_points`), or any result with a
scheduler without rungs; a trial that had reported nothing when the budget was spent (drawn
before, started after) stops at its first result. A trial stopped so says so in its last result
(`BUDGET_STOP`), which names it in the console and MLflow.
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.search import Searcher

from tuner.search.faults.outcome import BUDGET_STOP
from tuner.search.trial.trainable import TIME_ATTR


def budget_tokens(study: Any) -> int:
    """The study budget in tokens: given, or full_trials times a full trial's tokens."""
    budget = study.search.study_budget
    if budget.tokens is not None:
        return budget.tokens
    return round(budget.full_trials * study.full_trial_tokens())


class BudgetWatch(tune.Callback):
    """Tune callback: the tokens the study's trials trained, and whether they spent its budget."""

    def __init__(self, study: Any) -> None:
        from tuner.search.searchers.algorithms import stopping_points

        self.limit = budget_tokens(study)
        self.full_trials = study.search.study_budget.full_trials
        self.points = stopping_points(study) or ()  # none (no rungs): any result is one
        self.tokens: dict[str, float] = {}  # each trial's latest tokens
        self.owed: set[str] | None = None  # once spent: the trials that had reported by then

    @property
    def spent(self) -> float:
        return sum(self.tokens.values())

    @property
    def exhausted(self) -> bool:
        return self.owed is not None

    @property
    def tally(self) -> str:
        """The tokens spent of the budget's."""
        trials = f" ({self.full_trials:g} full trials)" if self.full_trials is not None else ""
        return f"{self.spent:,.0f} of {self.limit:,} tokens{trials}"

    @property
    def reason(self) -> str:
        """Why the study ended ("" while the budget lasts)."""
        return f"stopped once its study budget was spent: {self.tally}" if self.exhausted else ""

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self.count(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.count(trials)  # a resumed study with nothing left to run takes no step

    def count(self, trials: list) -> None:
        """Take each trial's latest tokens from Tune's record of it."""
        for trial in trials:
            if TIME_ATTR in (trial.last_result or {}):
                self.tokens[trial.trial_id] = trial.last_result[TIME_ATTR]
        self._check()

    def _check(self) -> None:
        if self.owed is None and self.spent >= self.limit:
            self.owed = {trial_id for trial_id, tokens in self.tokens.items() if tokens > 0}

    def stops(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Whether the trial stops at this result (counted first); marks the result if so."""
        if TIME_ATTR not in result:
            return False
        before, tokens = self.tokens.get(trial_id, 0), result[TIME_ATTR]
        self.tokens[trial_id] = tokens
        self._check()
        if self.owed is None or tokens >= result.get("budget_tokens", float("inf")):
            return False  # the budget lasts, or the trial ends here anyway
        reached = not self.points or any(before < point <= tokens for point in self.points)
        if trial_id in self.owed and not reached:
            return False
        result[BUDGET_STOP] = True
        return True


class BudgetStopper(tune.Stopper):
    """Tune stopper: a trial at its next stopping point once the study budget is spent."""

    def __init__(self, watch: BudgetWatch) -> None:
        self.watch = watch  # one pickle with the callbacks keeps them together

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self.watch.stops(trial_id, result)

    def stop_all(self) -> bool:
        return False


class BudgetSearcher(Searcher):
    """Wraps `searcher`: no more trials (Searcher.FINISHED) once the study budget is spent."""

    def __init__(self, searcher: Searcher, watch: BudgetWatch) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.watch = searcher, watch

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        return Searcher.FINISHED if self.watch.exhausted else self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        """Nothing of its own for Tune to save: the watch counts again from Tune's trials."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        pass
