"""probe.png: the sweep's loss against α (each step, and smoothed without lag), the suggested
α_max range shaded."""

from __future__ import annotations

import math
from typing import Any

from model.lr_probe import ProbeCurve, ProbeRange, zero_phase


def probe_figure(curve: ProbeCurve, found: ProbeRange, shown: tuple[float, float] | None,
                 title: str) -> Any:
    """The figure of one sweep, with the range `shown` (as printed: rounded outwards)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    points = [p for p in curve.points if math.isfinite(p.loss)]
    lrs = [p.lr for p in points]
    ax.plot(lrs, [p.loss for p in points], color="tab:blue", alpha=0.35, lw=1, label="batch loss")
    if points:
        ax.plot(lrs, zero_phase([p.loss for p in points]), color="tab:blue", lw=2,
                label="smoothed (EMA forwards and backwards)")
    if shown is not None:
        ax.axvspan(*shown, color="tab:green", alpha=0.15,
                   label=f"α_max range [{shown[0]:.2g}, {shown[1]:.2g}]")
    if found.steepest is not None:
        ax.axvline(found.steepest, color="tab:orange", ls="--", lw=1, label="steepest fall")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator())  # a label a decade: a sweep spans several
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    losses = [p.loss for p in points]
    if losses:  # the diverging tail would squash the curve
        ax.set_ylim(min(losses) * 0.95, min(max(losses), 1.3 * losses[0]) * 1.02)
    ax.set_xlabel("α (learning rate), growing exponentially each step")
    ax.set_ylabel("train loss")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return fig
