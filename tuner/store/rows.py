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
    batch_size: int | None = None  # its B, as logged
    noise_scale: float | None = None  # B_simple in sequences at its last measurement, if any
    noise_scale_tokens: float | None = None  # the same in tokens

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
        usable=runs.counts_as_best(run), reached_at=best_reached_at(points),
        batch_size=_whole(run.data.params.get("batch_size")),
        noise_scale=_measured(run, "noise_scale"),
        noise_scale_tokens=_measured(run, "noise_scale_tokens"))


def _whole(text: str | None) -> int | None:
    """A logged whole number, or None."""
    return int(text) if text is not None and text.isdigit() else None


def _measured(run: Any, key: str) -> float | None:
    """A metric's value at its last step (inf restored), None where the run never logged it."""
    return runs.metric(run, key) if key in run.data.metrics else None


def best_reached_at(points: list[tuple[int, float]]) -> int:
    """The tokens at which a val_loss history first reached its lowest finite value (else its
    last tokens, 0 with no point)."""
    finite = [(tokens, loss) for tokens, loss in points if math.isfinite(loss)]
    if not finite:
        return points[-1][0] if points else 0
    return min(finite, key=lambda point: point[1])[0]



def noise_text(row: TrialRow) -> str:
    """The trial's gradient noise scale at its end beside its B, and what the two say; "" where
    it was never measured."""
    if row.noise_scale is None:
        return ""
    text = f"B_simple at its end {shown_noise(row.noise_scale)} sequences"
    if math.isfinite(row.noise_scale) and row.noise_scale_tokens is not None:
        text += f" ({shown_noise(row.noise_scale_tokens)} tokens)"
    if row.batch_size is None:
        return text
    return f"{text}, its B {row.batch_size}: {batch_verdict(row.batch_size, row.noise_scale)}"


def shown_noise(value: float) -> str:
    """B_simple to three figures: 312, 1,250, 19,968, 0.87; ∞ where the noise hid |G|²."""
    if math.isinf(value):
        return "∞"
    return f"{float(f'{value:.3g}'):,.0f}" if value >= 1 else f"{value:.2g}"


def batch_verdict(batch: int, noise: float) -> str:
    """What B against B_simple says (McCandlish et al. 2018): well below it, a larger B takes
    fewer steps for about the same tokens; well above it, a smaller B takes fewer tokens."""
    if batch < noise / 2:
        return "below B_simple, a larger B would take fewer steps for about the same tokens"
    if batch > 2 * noise:
        return "above B_simple, a smaller B would reach the same loss on fewer tokens"
    return "near B_simple, the balance of steps and tokens"
