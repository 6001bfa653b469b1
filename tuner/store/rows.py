"""One trial run as the tables and the study's description show it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from model.metrics import perplexity
from tuner.store import runs
from tuner.store.layout import STATUS_TAG, TRIAL_TAG


@dataclass
class TrialRow:
    """One trial as the `best` table shows it."""

    trial_id: str
    run_id: str
    params: dict[str, str]  # searched parameter, as the study file names it → its logged value
    val_loss: float  # the best of the trial's evaluations
    tokens: int  # trained
    status: str
    pbt: bool = False  # PBT changed its values as it ran: `params` are those it ended with
    usable: bool = True  # it can be the best: a finite val_loss, and it neither diverged nor failed
    reached_at: int = 0  # the tokens at which it first reached its best val_loss

    @property
    def perplexity(self) -> float:
        return perplexity(self.val_loss)


def trial_row(client: Any, run: Any, points: list[tuple[int, float]] | None = None) -> TrialRow:
    """What the tables show of one trial run (`points`: its val_loss history, if read already)."""
    if points is None:
        points = runs.metric_points(client, run.info.run_id, "val_loss")
    params, by_pbt = runs.searched_values(run)
    return TrialRow(
        trial_id=run.data.tags.get(TRIAL_TAG, "?"), run_id=run.info.run_id, params=params,
        val_loss=runs.metric(run, "best_val_loss"), tokens=points[-1][0] if points else 0,
        status=run.data.tags.get(STATUS_TAG, "?") + (" (PBT)" if by_pbt else ""), pbt=by_pbt,
        usable=runs.counts_as_best(run), reached_at=best_reached_at(points))


def best_reached_at(points: list[tuple[int, float]]) -> int:
    """The tokens at which a val_loss history first reached its lowest finite value (else its
    last tokens, 0 with no point)."""
    finite = [(tokens, loss) for tokens, loss in points if math.isfinite(loss)]
    if not finite:
        return points[-1][0] if points else 0
    return min(finite, key=lambda point: point[1])[0]
