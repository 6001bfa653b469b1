"""BOHB's model on a scheduler's rungs (Falkner et al. 2018): TPE fitted to the losses at the
furthest evaluation that enough trials reached, stopped and running trials included, so that
what ASHA learns at its first rungs steers the next samples before many trials finish."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

SEEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class RungTPESampler(optuna.samplers.BaseSampler):
    """TPE on the trials' values at one evaluation step: the furthest step at least `min_points`
    trials reported (BOHB's rule: the highest budget with enough observations); random until a
    step has that many, and with probability `random_fraction` after, as BOHB keeps exploring."""

    def __init__(self, seed: int, min_points: int | None = None,
                 random_fraction: float = 1 / 3) -> None:
        self._rng = np.random.default_rng(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._space = optuna.search_space.IntersectionSearchSpace(include_pruned=True)
        self.min_points, self.random_fraction = min_points, random_fraction

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {name: dist for name, dist in self._space.calculate(study).items()
                if not dist.single()}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        draw = self._rng.random()  # drawn every time, so the sequence does not hang on history
        seed = int(self._rng.integers(2**31))
        if not search_space or draw < self.random_fraction:
            return {}
        observed = rung_values(study.get_trials(deepcopy=False, states=SEEN), search_space)
        enough = self.min_points or len(search_space) + 1
        steps = [step for step, points in observed.items() if len(points) >= enough]
        if not steps:
            return {}
        model = optuna.create_study(direction=study.direction, sampler=optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=0, multivariate=True, constant_liar=False))
        model.add_trials([optuna.trial.create_trial(params=params, distributions=search_space,
                                                    value=value)
                          for params, value in observed[max(steps)]])
        return model.ask(fixed_distributions=search_space).params

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)


def rung_values(trials: list[FrozenTrial], space: dict[str, BaseDistribution]
                ) -> dict[int, list[tuple[dict[str, Any], float]]]:
    """Each evaluation step's (params, value) over the trials that reported it and hold every
    parameter of `space`: a completed trial without intermediate values counts at the last step,
    a diverged one (not finite) as that step's worst."""
    last = max((step for trial in trials for step in trial.intermediate_values), default=0)
    observed: dict[int, list[tuple[dict[str, Any], float]]] = defaultdict(list)
    for trial in trials:
        if any(name not in trial.params for name in space):
            continue
        params = {name: trial.params[name] for name in space}
        values = dict(trial.intermediate_values)
        if not values and trial.state == TrialState.COMPLETE and trial.value is not None:
            values = {last: trial.value}
        for step, value in values.items():
            observed[step].append((params, value))
    for points in observed.values():
        worst = max((value for _, value in points if np.isfinite(value)), default=0.0)
        points[:] = [(params, value if np.isfinite(value) else worst) for params, value in points]
    return observed
