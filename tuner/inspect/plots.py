"""The report's figures (matplotlib, no pyplot): every trial's val_loss with the leaders zoomed and
labelled, the best trial's learning rate, importance with its spread, parallel coordinates, a
transfer study's α–loss curve at each size, and the leaders' gradient noise scale."""

from __future__ import annotations

import math
import textwrap
from typing import Any

from tuner.inspect.importance import Curve, Importance
from tuner.output import count
from tuner.space.params import shown_value, symbol
from tuner.store.rows import TrialRow
from tuner.store.transfer import Transfer

# each figure's file name in a report
LOSS_PNG, LR_PNG, IMPORTANCE_PNG = "val_loss.png", "lr_schedule.png", "importance.png"
PARALLEL_PNG, TRANSFER_PNG = "parallel_coordinates.png", "transfer.png"
NOISE_PNG = "noise_scale.png"
STYLE = {"best": {"color": "black", "lw": 2.6, "alpha": 1.0, "zorder": 3},
         "completed": {"alpha": 0.8, "lw": 1.2, "color": "tab:blue"},
         "stopped": {"alpha": 0.3, "lw": 1.0, "color": "tab:blue"},
         "diverged": {"alpha": 0.6, "lw": 1.0, "color": "tab:red"},
         "failed": {"alpha": 0.4, "lw": 1.0, "ls": ":", "color": "gray"}}
# the leaders after the best (black), in both panels of val_loss.png: none is a status's colour
LEADER_COLORS = ("tab:orange", "tab:green", "tab:purple", "tab:brown")
LEADERS = 1 + len(LEADER_COLORS)
ZOOM = 1.2  # the leaders' panel shows val_loss up to this times the best


def short_tokens(tokens: float) -> str:
    """A token count to three digits: 40960 → "41k", 1925120 → "1.93M"."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(tokens) >= size:
            return f"{tokens / size:.3g}{unit}"
    return f"{tokens:.3g}"


def _token_axis(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: short_tokens(x)))


def plain_log_ticks(axis: Any) -> None:
    """Label a log axis at 1, 2 and 5 of each decade in plain numbers (0.5, 0.003; not 10^0)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _plain_log_y(ax: Any) -> None:
    """A log y-axis whose ticks read 0.5, 1, 2, 5."""
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis)


def leader_label(rank: int, row: TrialRow, best: TrialRow) -> str:
    """"#2 a9dd1f38 0.3805 (+0.0084) B=8 α_max=0.003756 …", wrapped."""
    gap = f" (+{row.val_loss - best.val_loss:.4f})" if row is not best else ""
    values = " ".join(f"{symbol(n)}={shown_value(n, v)}" for n, v in row.params.items())
    return textwrap.fill(f"#{rank} {row.trial_id} {row.val_loss:.4f}{gap} {values}".strip(),
                         width=64, subsequent_indent="    ")


def loss_figure(trial_curves: list[Curve], leaders: list[TrialRow]) -> Any:
    """val_loss against tokens, one line per trial ending in a dot (best black, the next leaders
    coloured, stopped faded, divergence a red x at the last finite value) on a log scale; beside
    it the `leaders` (best first) zoomed to their best values, each labelled with its values."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    leaders = leaders[:LEADERS]
    color = {row.run_id: c for row, c in zip(leaders, ("black", *LEADER_COLORS))}
    fig = Figure(figsize=(13, 6.5) if leaders else (9, 5.5), layout="constrained")
    ax = fig.add_subplot(1, 2 if leaders else 1, 1)
    unplotted, drawn = 0, set()
    for c in trial_curves:
        finite = c.finite()
        if not finite:  # diverged or failed at its first evaluation: no value to draw
            unplotted += 1
            continue
        status = "best" if leaders and c.run_id == leaders[0].run_id else c.status
        status = status if status in STYLE else "completed"  # running, interrupted
        drawn.add(status)
        end = {} if c.status == "diverged" else {"marker": "o", "ms": 4, "markevery": [-1]}
        style = {**STYLE[status], **({"color": color[c.run_id]} if c.run_id in color else {})}
        ax.plot(*zip(*finite), gid=f"trial:{c.trial_id}", **end, **style)  # one point shows too
        if c.status == "diverged":
            ax.plot(*finite[-1], marker="x", ms=10, mew=2.5, color="tab:red", gid="diverged")
    legend = {"best": Line2D([], [], **STYLE["best"], label="best"),
              "completed": Line2D([], [], **STYLE["completed"], label="completed"),
              "stopped": Line2D([], [], **STYLE["stopped"], label="stopped early"),
              "diverged": Line2D([], [], color="tab:red", marker="x", ls="", mew=2.5,
                                 label="diverged"),
              "failed": Line2D([], [], **STYLE["failed"], label="failed")}
    if drawn:  # only what the plot shows
        ax.legend(handles=[legend[key] for key in legend if key in drawn], loc="upper right")
        _plain_log_y(ax)
    ax.set(xlabel="tokens seen", ylabel="validation loss (nats/token, log scale)",
           title=f"val_loss of {count(len(trial_curves) - unplotted, 'trial')}" + (
               f" ({unplotted} more with no finite value, not drawn)" if unplotted else ""))
    _token_axis(ax)
    ax.grid(alpha=0.3, which="both")
    if leaders:
        _leaders_panel(fig.add_subplot(1, 2, 2), trial_curves, leaders, color)
    return fig


def _leaders_panel(ax: Any, trial_curves: list[Curve], leaders: list[TrialRow],
                   color: dict[str, str]) -> None:
    """The leaders' curves where they end, from the best's val_loss to ZOOM times it (or the
    worst leader's, if less), each end labelled with its rank."""
    bests = [row.val_loss for row in leaders]
    top = min(max(bests), ZOOM * bests[0])
    span = max(top - bests[0], 0.02 * bests[0])
    low, high = bests[0] - 0.15 * span, top + 0.35 * span
    curve_of = {c.run_id: c.finite() for c in trial_curves}
    start = min(t for row in leaders for t, v in curve_of[row.run_id] if v <= high)
    end = max(curve_of[row.run_id][-1][0] for row in leaders)
    width = max(end - start, 1)
    for rank, row in enumerate(leaders, 1):
        ax.plot(*zip(*curve_of[row.run_id]), color=color[row.run_id], marker="o", ms=3,
                lw=2.2 if rank == 1 else 1.5, gid=f"leader:{row.trial_id}",
                label=leader_label(rank, row, leaders[0]))
    ends = sorted(((curve_of[row.run_id][-1], rank, row) for rank, row in enumerate(leaders, 1)
                   if low <= curve_of[row.run_id][-1][1] <= high), key=lambda e: e[0][1])
    heights = _spread([v for (_, v), _, _ in ends], 0.045 * (high - low))
    for ((tokens, value), rank, row), y in zip(ends, heights):
        ax.annotate(f"#{rank}", (tokens, value), xytext=(end + 0.03 * width, y),
                    color=color[row.run_id], fontsize=9, fontweight="bold", va="center",
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "gray"})
    ax.set_xlim(start - 0.03 * width, end + 0.1 * width)
    ax.set_ylim(low, high)
    ax.set(xlabel="tokens seen", ylabel="validation loss (nats/token)",
           title="the best trial, zoomed on its end" if len(leaders) == 1 else
           f"the {len(leaders)} best trials, zoomed on their ends")
    _token_axis(ax)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)


def lr_figure(schedule: list[tuple[int, float]], logged: list[tuple[int, float]], kind: str,
              title: str) -> Any:
    """The best trial's learning rate: the `kind` schedule at every step, the values it logged."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(*zip(*schedule), lw=1.8, gid="schedule", label=f"{kind} schedule")
    if logged:
        ax.plot(*zip(*logged), "o", ms=4, gid="logged", label="α at each evaluation")
    ax.set(xlabel="tokens seen", ylabel="learning rate α", title=title)
    _token_axis(ax)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def importance_figure(found: Importance) -> Any:
    """fANOVA importance as horizontal bars, most important on top, its spread over subsets of
    the trials as whiskers, the tokens and trials it is over in the title."""
    from matplotlib.figure import Figure

    names = list(found.scores)[::-1]
    fig = Figure(figsize=(8, 1.9 + 0.5 * len(names)), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.15, h_pad=0.1)  # the longest label clear of the edge
    ax = fig.add_subplot()
    shares = [found.scores[n] for n in names]
    whiskers = [[max(found.scores[n] - found.low[n], 0) for n in names],
                [max(found.high[n] - found.scores[n], 0) for n in names]]
    ax.barh([symbol(n) for n in names], shares, color="tab:blue", gid="importance",
            xerr=whiskers, error_kw={"ecolor": "black", "capsize": 4, "lw": 1.2})
    for y, n in enumerate(names):
        ax.annotate(f"{found.scores[n]:.2f} ({found.low[n]:.2f}–{found.high[n]:.2f})",
                    (max(found.high[n], found.scores[n]), y), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=9)
    ax.set(xlim=(0, 1.25), title=(
        f"hyperparameter importance: val_loss at {found.tokens:,} tokens, "
        f"{count(found.trials, 'trial')}"),
        xlabel=f"share of the variance of val_loss explained (fANOVA)\nwhiskers: {found.spread()}")
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
    ax.grid(axis="x", alpha=0.3)
    return fig


def _spread(ys: list[float], gap: float) -> list[float]:
    """Label heights near `ys` (ascending) at least `gap` apart."""
    out: list[float] = []
    for y in ys:
        out.append(max(y, out[-1] + gap) if out else y)
    return out


def parallel_figure(trials: list[tuple[str, Any]], reached: tuple[int, int]) -> Any:
    """Parallel coordinates of (trial id, Optuna trial) pairs (searched values; value: the trial's
    best val_loss, reached between `reached` tokens): an axis per parameter on its searched
    range, the objective's on a log scale; colour by rank, the best black on top, the three best
    labelled."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator

    names = list(dict.fromkeys(n for _, t in trials for n in t.distributions))
    dists = {n: next(t.distributions[n] for _, t in trials if n in t.distributions)
             for n in names}
    ranked = sorted(trials, key=lambda pair: pair[1].value)
    losses = [t.value for _, t in ranked]
    low, high = min(losses) / 1.05, max(losses) * 1.05
    fig = Figure(figsize=(max(8, 2.2 * (len(names) + 2)), 5.5), layout="constrained")
    ax = fig.add_subplot()

    def place(name: str | None, value: Any) -> float:
        """`value` of parameter `name` (None: the objective) as a fraction of its axis."""
        if name is None:
            lo, hi, log = low, high, True
        elif hasattr(dists[name], "choices"):
            choices = dists[name].choices
            return choices.index(value) / (len(choices) - 1) if len(choices) > 1 else 0.5
        else:
            lo, hi, log = dists[name].low, dists[name].high, dists[name].log
        if log:
            return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return (value - lo) / (hi - lo) if hi > lo else 0.5

    for i, name in enumerate([*names, None]):
        twin = ax.twinx()
        for side in ("left", "top", "bottom"):
            twin.spines[side].set_visible(False)
        twin.spines["right"].set_position(("data", i))
        if name is None:
            _plain_log_y(twin)
            twin.set_ylim(low, high)
            label = f"best val_loss\nreached at {short_tokens(reached[0])}"
            label += (f"–{short_tokens(reached[1])}" if reached[1] > reached[0] else "") + \
                " tokens"
        elif hasattr(dists[name], "choices"):
            choices = dists[name].choices
            twin.set_ylim(0, max(len(choices) - 1, 1))
            twin.yaxis.set_major_locator(FixedLocator(range(len(choices))))
            twin.set_yticklabels([shown_value(name, c) for c in choices])
            label = symbol(name)
        else:
            if dists[name].log:
                _plain_log_y(twin)
            twin.set_ylim(dists[name].low, dists[name].high)
            label = symbol(name)
        twin.annotate(label, (i, -0.03), xycoords=("data", "axes fraction"), ha="center",
                      va="top", fontsize=10)
    colors = colormaps["viridis"]
    for rank, (trial_id, trial) in reversed(list(enumerate(ranked))):  # the best drawn last
        ys = [place(n, trial.params[n]) if n in trial.params else math.nan for n in names]
        best = rank == 0
        ax.plot(range(len(names) + 1), [*ys, place(None, trial.value)], alpha=0.9,
                color="black" if best else colors(0.82 * rank / max(len(ranked) - 1, 1)),
                lw=2.8 if best else 1.5, zorder=3 if best else 2, gid=f"trial:{trial_id}")
    leaders = ranked[:3]  # the lowest first, as its label goes lowest
    heights = _spread([place(None, t.value) for _, t in leaders], 0.06)
    for (trial_id, trial), y in zip(leaders, heights):
        rank = ranked.index((trial_id, trial)) + 1
        ax.annotate(f"#{rank} {trial_id} {trial.value:.4f}", (len(names), place(None, trial.value)),
                    xytext=(len(names) + 0.25, y), fontsize=9, va="center",
                    arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "gray"})
    ax.set_xlim(-0.05, len(names) + 0.95)
    ax.set_ylim(0, 1)
    ax.set_axis_off()
    ax.set_title(f"{count(len(ranked), 'trial')}, a line each: darker = lower best val_loss "
                 "(black: the best)", pad=14)
    return fig


def transfer_figure(transfer: Transfer) -> Any:
    """The μTransfer figure: best val_loss against the axis parameter (log scale when positive),
    a line per size, each size's best a star; a trial that diverged or failed an x on the top
    edge. Lines join the points only when the axis is all the study searched (else they would
    zig-zag between the other values)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    finite = [p.loss for listed in transfer.points.values() for p in listed
              if math.isfinite(p.loss)]
    top = max(finite) * 1.05 if finite else 1.0
    only_axis = all(list(p.values) == [transfer.axis] for listed in transfer.points.values()
                    for p in listed)
    colors = colormaps["viridis"]
    field = symbol(transfer.field)
    for i, size in enumerate(transfer.sizes):
        color = colors(0.85 * i / max(len(transfer.sizes) - 1, 1))
        curve = transfer.curve(size)
        shown = [(p.at(transfer.axis), p.loss) for p in curve if math.isfinite(p.loss)]
        lost = [p.at(transfer.axis) for p in curve if not math.isfinite(p.loss)]
        best = transfer.best(size)
        label = f"{field}={size}" + (f": best {symbol(transfer.axis)}="
                                     f"{shown_value(transfer.axis, best.values[transfer.axis])}"
                                     if best else ": none finished")
        if shown:
            ax.plot(*zip(*shown), "-o" if only_axis else "o", color=color, ms=5, lw=1.6,
                    label=label, gid=f"size:{size}")
        if lost:
            ax.plot(lost, [top] * len(lost), "x", color=color, ms=8, mew=2, clip_on=False)
        if best:
            ax.plot(best.at(transfer.axis), best.loss, "*", color=color, ms=16, mec="black",
                    zorder=4)
    if all(p.at(transfer.axis) > 0 for listed in transfer.points.values() for p in listed):
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
    _plain_log_y(ax)
    ax.set(xlabel=symbol(transfer.axis), ylabel="best val_loss",
           title=f"{symbol(transfer.axis)} against val_loss at each {field} (★ each size's best; "
                 "x: diverged)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    return fig


def noise_figure(series: list[tuple[TrialRow, list[tuple[int, float]]]]) -> Any:
    """The gradient noise scale B_simple against tokens of each leading trial of `series` (best
    first, coloured as in val_loss.png), its B a dotted line of its colour; a measurement where
    the noise hid |G|² (inf) is left out."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for (row, points), color in zip(series[:LEADERS], ("black", *LEADER_COLORS)):
        shown = [(tokens, value) for tokens, value in points if 0 < value < math.inf]
        if shown:
            ax.plot(*zip(*shown), "-o", color=color, ms=3, lw=1.4, gid=f"noise:{row.trial_id}",
                    label=f"{row.trial_id}, B={row.batch_size}")
        if row.batch_size:
            ax.axhline(row.batch_size, color=color, ls=":", lw=1)
    _plain_log_y(ax)
    _token_axis(ax)
    ax.set(xlabel="tokens seen", ylabel="B_simple (sequences)",
           title="gradient noise scale of the best trials (dotted: each one's B)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig
