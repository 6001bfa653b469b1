"""fANOVA importance of a study's searched parameters, over every trial's val_loss at the same
tokens, with its spread over random subsets of the trials."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuner.search.searchers import history

RESAMPLES = 30
SUBSET = 0.8  # of the trials, drawn without replacement
RESAMPLE_TREES = 16  # Optuna's 64 per fit: the spread comes from the subsets, not the trees
SPREAD = (10, 90)  # the percentiles shown


@dataclass
class Curve:
    """One trial's val_loss against tokens."""

    trial_id: str
    run_id: str
    status: str
    points: list[tuple[int, float]]

    def finite(self) -> list[tuple[int, float]]:
        """The points with a finite val_loss."""
        return [(t, v) for t, v in self.points if math.isfinite(v)]


@dataclass
class Importance:
    """Each searched parameter's share of the variance of val_loss at `tokens` over `trials`
    trials, most important first; `low` and `high` its SPREAD percentiles over `resamples`
    random subsets of SUBSET of the trials."""

    scores: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    tokens: int
    trials: int
    resamples: int

    def spread(self) -> str:
        """What `low` and `high` are, in words."""
        return (f"the {SPREAD[0]}th to {SPREAD[1]}th percentile over {self.resamples} random "
                f"subsets of {SUBSET:.0%} of the trials")


def values_at_equal_tokens(trial_curves: list[Curve]) -> tuple[dict[str, float], int]:
    """Each completed or stopped trial's val_loss at its first evaluation at or past T, the
    furthest tokens all of them trained, by run id; and T. A stopped trial's last loss is from
    shorter training than a completed one's: compared as they are, they rate the scheduler's
    stops, not the values. (A batch size whose steps do not divide the evaluation interval
    evaluates a step past T, or ends a step past the budget.)"""
    from tuner.store.layout import COMPLETED, STOPPED

    compared = {}  # run id -> finite val_loss points
    for c in trial_curves:
        finite = c.finite()
        if c.status in (COMPLETED, STOPPED) and finite:
            compared[c.run_id] = finite
    if not compared:
        return {}, 0
    at = min(finite[-1][0] for finite in compared.values())
    return {run_id: next(v for t, v in finite if t >= at)
            for run_id, finite in compared.items()}, at


def _fanova(space: Any, points: list[tuple[dict[str, Any], float]], mode: str, seed: int,
            trees: int) -> dict[str, float]:
    """fANOVA importance of each searched parameter over `points`; ValueError or RuntimeError
    when no parameter varies across them."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    study.add_trials(history.optuna_trials(space, points))
    return {name: float(share) for name, share in get_param_importances(
        study, evaluator=FanovaImportanceEvaluator(n_trees=trees, seed=seed)).items()}


def importance(space: Any, points: list[tuple[dict[str, Any], float]], mode: str, tokens: int
               ) -> Importance | None:
    """fANOVA importance of the finite `points` (searched values, val_loss at `tokens`), with
    its spread over RESAMPLES random subsets; None when fewer than two points or nothing varies.
    Subsets, not bootstrap resamples: a forest fits a drawn-twice trial as two agreeing ones,
    and the bootstrap's importances fell below the whole set's (0.39-0.79 around 0.88)."""
    import numpy as np
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    points = [p for p in points if math.isfinite(p[1])]
    if len(points) < 2:
        return None
    try:
        scores = _fanova(space, points, mode, 0, 64)
    except (ValueError, RuntimeError):  # no parameter varies across the trials
        return None
    rng, subsets = np.random.default_rng(0), {name: [] for name in scores}
    for seed in range(RESAMPLES):
        chosen = rng.choice(len(points), max(2, round(SUBSET * len(points))), replace=False)
        try:
            shares = _fanova(space, [points[i] for i in chosen], mode, seed, RESAMPLE_TREES)
        except (ValueError, RuntimeError):  # every chosen trial alike: no share to compare
            continue
        for name, values in subsets.items():
            values.append(shares.get(name, 0.0))
    spread = {name: np.percentile(values, SPREAD) if values else (scores[name],) * 2
              for name, values in subsets.items()}
    return Importance(scores, {n: float(s[0]) for n, s in spread.items()},
                      {n: float(s[1]) for n, s in spread.items()}, tokens, len(points),
                      len(next(iter(subsets.values()))))
