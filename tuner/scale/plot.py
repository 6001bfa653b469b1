"""scaling.png: each study's val_loss over α_max (and B) with its near-optimal trials and the
fit's optimum at its compute; then each fitted law against compute, with its interval."""

from __future__ import annotations

from typing import Any

import numpy as np

from tuner.inspect.plots import plain_log_ticks
from tuner.scale.fit import FITTED, PowerLaw, Scaling, Study

NEAR = {"marker": "*", "s": 140, "color": "crimson", "edgecolor": "black", "zorder": 4}
OPTIMUM = {"marker": "X", "s": 120, "color": "gold", "edgecolor": "black", "zorder": 5}


def scaling_figure(fit: Scaling) -> Any:
    """The figure: a row of study panels over a row of law panels."""
    from matplotlib.figure import Figure

    laws = {name: law for name, law in fit.laws.items() if law is not None}
    columns = max(len(fit.studies), 2)
    fig = Figure(figsize=(4.4 * columns, 8.4), layout="constrained")
    grid = fig.add_gridspec(2, columns)
    for i, study in enumerate(fit.studies):
        _study_panel(fig.add_subplot(grid[0, i]), study, fit)
    for i, (name, law) in enumerate(laws.items()):
        _law_panel(fig.add_subplot(grid[1, i]), name, law, fit)
    return fig


def _study_panel(ax: Any, study: Study, fit: Scaling) -> None:
    """val_loss contours over log α × log B where both were searched, else val_loss against α."""
    near = fit.near[study.name]
    optimum = {name: law.at(study.compute).value for name, law in fit.laws.items()
               if law is not None and name in study.searched}
    ax.set_title(f"{study.name}: N={study.params:.3g}, D={study.tokens:.3g}\n"
                 f"C={study.compute:.3g} FLOPs", fontsize=10)
    if _contourable(study):
        x, y, loss = (np.array([np.log10(t.values["lr_max"]) for t in study.trials]),
                      np.array([np.log2(t.values["batch_size"]) for t in study.trials]),
                      np.array([t.val_loss for t in study.trials]))
        filled = ax.tricontourf(x, y, loss, levels=12, cmap="viridis_r")
        ax.figure.colorbar(filled, ax=ax, label="val_loss")
        ax.scatter(x, y, s=10, color="black", label="trials")
        ax.scatter([np.log10(t.values["lr_max"]) for t in near],
                   [np.log2(t.values["batch_size"]) for t in near], label="near-optimal", **NEAR)
        ax.scatter([np.log10(optimum["lr_max"])], [np.log2(optimum["batch_size"])],
                   label="fit at C", **OPTIMUM)
        ax.set(xlabel="log10 α_max", ylabel="log2 B")
    else:
        ax.scatter([t.values["lr_max"] for t in study.trials], [t.val_loss for t in study.trials],
                   s=14, color="black", label="trials")
        ax.scatter([t.values["lr_max"] for t in near], [t.val_loss for t in near],
                   label="near-optimal", **NEAR)
        if "lr_max" in optimum:
            ax.axvline(optimum["lr_max"], color="goldenrod", ls="--", label="fit's α_max at C")
        ax.set(xscale="log", xlabel="α_max", ylabel="val_loss")
        plain_log_ticks(ax.xaxis)
    ax.legend(fontsize=7)


def _contourable(study: Study) -> bool:
    """Whether the study searched α and B over at least three distinct, non-collinear points."""
    if not {"lr_max", "batch_size"} <= study.searched:
        return False
    points = np.unique([(np.log(t.values["lr_max"]), np.log(t.values["batch_size"]))
                        for t in study.trials], axis=0)
    return len(points) >= 3 and np.linalg.matrix_rank(points - points.mean(axis=0)) == 2


def _law_panel(ax: Any, name: str, law: PowerLaw, fit: Scaling) -> None:
    """The near-optimal points against compute, the fitted line with its band, the target."""
    symbol = FITTED[name]
    points = [(t.compute, t.values[name]) for s in fit.studies if name in s.searched
              for t in fit.near[s.name]]
    ends = [c for c, _ in points] + ([fit.target_compute] if fit.target_compute else [])
    grid = np.geomspace(min(ends) / 1.5, max(ends) * 1.5, 100)
    bands = [law.at(c) for c in grid]
    ax.fill_between(grid, [b.lo for b in bands], [b.hi for b in bands], color="tab:blue",
                    alpha=0.2, label="95% interval")
    b = law.exponent
    ax.plot(grid, [i.value for i in bands], color="tab:blue",
            label=f"{symbol}* = {law.coefficient:.3g}·C^{b.value:.3f}")
    ax.scatter(*zip(*points), color="crimson", edgecolor="black", zorder=4,
               label="near-optimal trials")
    if fit.target_compute:
        at = law.at(fit.target_compute)
        below, above = max(0.0, at.value - at.lo), max(0.0, at.hi - at.value)  # float noise
        ax.errorbar([fit.target_compute], [at.value], yerr=[[below], [above]],
                    fmt="X", color="gold", mec="black", ms=11, capsize=4, zorder=5,
                    label=f"target: {at.value:.4g}")
    shown = [y for _, y in points] + [i.lo for i in bands] + [i.hi for i in bands]
    ax.set(xscale="log", yscale="log", xlabel="compute C = 6·N·D (FLOPs)", ylabel=f"{symbol}*",
           title=f"{symbol}*(C): exponent {b.value:.3f} [{b.lo:.3f}, {b.hi:.3f}]",
           ylim=(min(shown) / 1.5, max(shown) * 1.5))  # a flat fit is not zoomed to its rounding
    plain_log_ticks(ax.yaxis)
    ax.legend(fontsize=7)
