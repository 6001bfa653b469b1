"""A transfer study's trials by size: each size's α–loss curve and its best α (the μTransfer
figure's numbers), read from the trial rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuner.store.rows import TrialRow

AXIS = "lr_max"  # the curves' x-axis when searched: α_max, the value μP means to carry over


@dataclass
class Point:
    """One trial at one size: the values it shares with the other sizes' trials, its loss."""

    trial_id: str
    values: dict[str, str]  # searched values but the size, as logged
    loss: float  # its best val_loss; inf when it diverged or failed

    def at(self, name: str) -> float:
        """Its value of `name` as a number."""
        return float(self.values[name])


@dataclass
class Transfer:
    """The trials of a transfer study by size, the proxy (the size the searcher learnt from)
    first."""

    field: str
    sizes: list[int]
    points: dict[int, list[Point]]
    axis: str  # the searched parameter the curves are drawn over

    def best(self, size: int) -> Point | None:
        """The size's trial of lowest finite loss (ties: the earlier listed)."""
        finite = [p for p in self.points[size] if math.isfinite(p.loss)]
        return min(finite, key=lambda p: p.loss) if finite else None

    def curve(self, size: int) -> list[Point]:
        """The size's trials in the order of their axis value."""
        return sorted(self.points[size], key=lambda p: p.at(self.axis))

    def verdict(self) -> str:
        """Whether the proxy's best value held: 'the best α_max, 0.01, is the same at every
        d_model' or 'the best α_max moves: 0.01 at d_model=64, 0.003 at 128'."""
        from tuner.space.params import shown_value, symbol

        bests = {size: self.best(size) for size in self.sizes}
        shown = {size: shown_value(self.axis, p.values[self.axis]) if p else "none"
                 for size, p in bests.items()}
        name, field = symbol(self.axis), symbol(self.field)
        if len(set(shown.values())) == 1:
            return f"the best {name}, {shown[self.sizes[0]]}, is the same at every {field}"
        return f"the best {name} moves: " + ", ".join(
            f"{v} at {field}={size}" if i == 0 else f"{v} at {size}"
            for i, (size, v) in enumerate(shown.items()))

    def samples(self) -> list[dict[str, str]]:
        """Each sample's values (those its trials at every size share), in axis order."""
        seen: dict[str, dict[str, str]] = {}
        for size in self.sizes:
            for p in self.curve(size):
                seen.setdefault(repr(sorted(p.values.items())), p.values)
        return sorted(seen.values(), key=lambda v: float(v[self.axis]))

    def loss(self, size: int, values: dict[str, str]) -> float | None:
        """The loss of the size's trial of `values` (None: it has none)."""
        return next((p.loss for p in self.points[size] if p.values == values), None)


def read_transfer(recorded: dict[str, Any], rows: list[TrialRow]) -> Transfer | None:
    """The transfer of a study as `recorded` (its study.json) lists it, over the trials' `rows`;
    None for a study that transfers nothing or searched no number to draw the curves over."""
    field, sizes = next(((name, value["transfer"]) for name, value in recorded["model"].items()
                         if isinstance(value, dict) and "transfer" in value), (None, None))
    if field is None:
        return None
    points: dict[int, list[Point]] = {size: [] for size in sizes}
    for row in rows:
        if field in row.params and int(row.params[field]) in points:
            values = {n: v for n, v in row.params.items() if n != field}
            loss = row.val_loss if row.usable else math.inf
            points[int(row.params[field])].append(Point(row.trial_id, values, loss))
    first = next((p for listed in points.values() for p in listed), None)
    values = first.values if first else {}
    axis = AXIS if AXIS in values else next((n for n, v in values.items() if _number(v)), None)
    return Transfer(field, list(sizes), points, axis) if axis else None


def _number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
