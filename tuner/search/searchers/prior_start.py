"""A prior-centred start: a warm-started study's first trials at the earlier study's best
configuration and around it, given to the searcher as Ray's points_to_evaluate."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SPREAD = 0.1  # sd of a draw around the best, as a share of its range's width on its own scale


def near_best(study: Any, warm_trials: list[Any], count: int, seed: int) -> list[dict[str, Any]]:
    """The best of `warm_trials` (finished Optuna trials of this space), then count − 1 draws
    around it: each searched range normal about the best's value (sd a tenth of the range's
    width, log scale for a log range), clipped and, for whole numbers, put on the range's steps;
    choices and parameters the best does not use stay as the best has them."""
    best = min(warm_trials, key=lambda trial: trial.value).params
    dists, rng = study.searched(), np.random.default_rng(seed)
    points = [dict(best)]
    for _ in range(count - 1):
        point = dict(best)
        for name, value in best.items():
            dist = dists.get(name)
            if dist is not None and dist.key in ("loguniform", "uniform", "int"):
                point[name] = _around(value, dist, rng)
        points.append(point)
    return points


def _around(value: float, dist: Any, rng: np.random.Generator) -> float:
    log = dist.key == "loguniform" or getattr(dist, "log", False)
    scale, unscale = (math.log, math.exp) if log else (float, float)
    low, high = scale(dist.lo), scale(dist.hi)
    drawn = min(max(unscale(scale(value) + rng.normal(0, SPREAD * (high - low))), dist.lo),
                dist.hi)
    if dist.key != "int":
        return drawn
    return min(dist.lo + round((drawn - dist.lo) / dist.step) * dist.step, dist.hi)
