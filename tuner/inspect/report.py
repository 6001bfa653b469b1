"""`tuner report`: a study as pictures: val_loss curves of every trial, the best trial's learning
rate, fANOVA parameter importance, a parallel-coordinates plot and a short markdown summary."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import TrainConfig, parse_yaml
from model.shell import as_started
from tuner.errors import UserError
from tuner.inspect import best as best_mod
from tuner.inspect import history, runs
from tuner.output import count
from tuner.redact import redact
from tuner.space.params import shown_value

LOSS_PNG, LR_PNG, IMPORTANCE_PNG = "val_loss.png", "lr_schedule.png", "importance.png"
PARALLEL_HTML, SUMMARY_MD = "parallel_coordinates.html", "summary.md"
STYLE = {"best": {"color": "black", "lw": 2.6, "alpha": 1.0, "zorder": 3},
         "completed": {"alpha": 0.8, "lw": 1.2, "color": "tab:blue"},
         "stopped": {"alpha": 0.3, "lw": 1.0, "color": "tab:blue"},
         "diverged": {"alpha": 0.6, "lw": 1.0, "color": "tab:red"},
         "failed": {"alpha": 0.4, "lw": 1.0, "ls": ":", "color": "gray"}}


@dataclass
class Curve:
    """One trial's val_loss against tokens."""

    trial_id: str
    run_id: str
    status: str
    points: list[tuple[int, float]]


def curves(client: Any, trial_runs: list[Any]) -> list[Curve]:
    """The val_loss history of every trial run."""
    from tuner.search.mlflow_layout import STATUS_TAG, TRIAL_TAG

    return [Curve(r.data.tags.get(TRIAL_TAG, r.info.run_id), r.info.run_id,
                  r.data.tags.get(STATUS_TAG, "?"),
                  runs.metric_points(client, r.info.run_id, "val_loss")) for r in trial_runs]


def loss_figure(trial_curves: list[Curve], best_run_id: str) -> Any:
    """val_loss against tokens, one line per trial ending in a dot: best highlighted, stopped
    faded, divergence marked with a red x at the last finite value."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    unplotted, drawn = 0, set()
    for c in trial_curves:
        finite = [(t, v) for t, v in c.points if math.isfinite(v)]
        if not finite:  # diverged or failed at its first evaluation: no value to draw
            unplotted += 1
            continue
        status = "best" if c.run_id == best_run_id else c.status
        status = status if status in STYLE else "completed"  # running, interrupted
        drawn.add(status)
        end = {} if c.status == "diverged" else {"marker": "o", "ms": 4, "markevery": [-1]}
        ax.plot(*zip(*finite), gid=f"trial:{c.trial_id}", **end,  # a one-point trial shows too
                **STYLE[status])
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
    ax.set(xlabel="tokens seen", ylabel="validation loss (nats/token)",
           title=f"val_loss of {count(len(trial_curves) - unplotted, 'trial')}" + (
               f" ({unplotted} more with no finite value, not drawn)" if unplotted else ""))
    ax.grid(alpha=0.3)
    return fig


def lr_points(config: TrainConfig, val_points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """(tokens seen after the step, the step's α) for every step the trial took, as the trainer
    logs α at an evaluation; plateau cuts follow the trial's logged val_loss."""
    from model.schedules import LRSchedule

    schedule, per_step = LRSchedule.from_config(config), config.tokens_per_step
    val = dict(val_points)
    steps = (val_points[-1][0] // per_step) if val_points else config.steps
    out = []
    for t in range(steps):
        out.append(((t + 1) * per_step, schedule.lr(t)))
        if (t + 1) * per_step in val and math.isfinite(val[(t + 1) * per_step]):
            schedule.observe(val[(t + 1) * per_step], t + 1)
    return out


def lr_figure(config: TrainConfig, schedule: list[tuple[int, float]],
              logged: list[tuple[int, float]], title: str) -> Any:
    """The best trial's learning rate: the schedule at every step, and the values it logged."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(*zip(*schedule), lw=1.8, gid="schedule", label=f"{config.schedule} schedule")
    if logged:
        ax.plot(*zip(*logged), "o", ms=4, gid="logged", label="α at each evaluation")
    ax.set(xlabel="tokens seen", ylabel="learning rate α", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def importances(space: Any, points: list[tuple[dict[str, Any], float]], mode: str
                ) -> tuple[Any, dict[str, float]]:
    """An Optuna study of the finite points, and fANOVA importance of each searched parameter
    ({} when fewer than two trials or nothing varies)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    study.add_trials(history.optuna_trials(space, [p for p in points if math.isfinite(p[1])]))
    if len(study.trials) < 2:
        return study, {}
    try:
        scores = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError):  # no parameter varies across the trials
        return study, {}
    return study, dict(scores)


def equal_token_points(client: Any, trial_runs: list[Any], trial_curves: list[Curve],
                       workdir: Path) -> tuple[list[tuple[dict[str, Any], float]], int]:
    """(searched values, val_loss at T) of each completed or stopped trial, and T (see
    `values_at_equal_tokens`)."""
    values, at = values_at_equal_tokens(trial_curves)
    run_of = {r.info.run_id: r for r in trial_runs}
    return [(history.searched(client, run_of[run_id], workdir), value)
            for run_id, value in values.items()], at


def values_at_equal_tokens(trial_curves: list[Curve]) -> tuple[dict[str, float], int]:
    """Each completed or stopped trial's val_loss at its first evaluation at or past T, the
    furthest tokens all of them trained, by run id; and T. A stopped trial's last loss is from
    shorter training than a completed one's: compared as they are, they rate the scheduler's
    stops, not the values. (A batch size whose steps do not divide the evaluation interval
    evaluates a step past T, or ends a step past the budget.)"""
    from tuner.search.outcome import COMPLETED, STOPPED

    compared = {}  # run id -> finite val_loss points
    for c in trial_curves:
        finite = [(t, v) for t, v in c.points if math.isfinite(v)]
        if c.status in (COMPLETED, STOPPED) and finite:
            compared[c.run_id] = finite
    if not compared:
        return {}, 0
    at = min(finite[-1][0] for finite in compared.values())
    return {run_id: next(v for t, v in finite if t >= at)
            for run_id, finite in compared.items()}, at


def importance_figure(scores: dict[str, float]) -> Any:
    """fANOVA importance as horizontal bars, most important on top."""
    from matplotlib.figure import Figure

    names = list(scores)[::-1]
    fig = Figure(figsize=(7, 1.2 + 0.45 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh([best_mod.symbol(n) for n in names],
            [scores[n] for n in names], color="tab:blue", gid="importance")
    ax.set(xlabel="share of val_loss variance explained (fANOVA)", xlim=(0, 1),
           title="hyperparameter importance")
    ax.grid(axis="x", alpha=0.3)
    return fig


def parallel_html(study: Any) -> str:
    """Optuna's parallel-coordinates plot of the trials, as a self-contained HTML page."""
    from optuna.visualization import plot_parallel_coordinate

    return plot_parallel_coordinate(study).to_html(include_plotlyjs=True, full_html=True)


def recorded_space(client: Any, parent: Any, workdir: Path) -> Any:
    """The study as its space.yaml artifact defines it (the data section swapped for one that
    needs no files: only the space is used)."""
    import yaml

    from tuner.space import SpaceError, build_study

    text = runs.download(client, parent, "space.yaml", workdir).read_text()
    try:
        _, raw = parse_yaml(text)
    except yaml.YAMLError as err:
        raise RuntimeError(f"its space.yaml is not YAML ({err})") from None
    if not isinstance(raw, dict):
        raise RuntimeError("its space.yaml is not a study")  # noqa: TRY004 - shown as a note
    # a prepared folder's section is checked for nothing but the folder (not the vocabulary a
    # source would need): any folder will do
    raw.update(name=parent.data.tags.get("tuner.study", "study"), data={"path": str(workdir)})
    try:
        return build_study(raw)
    except SpaceError as err:
        raise RuntimeError(f"its space.yaml no longer validates ({err})") from None


def _reached_at(trial_curves: list[Curve], row: best_mod.TrialRow) -> int:
    """The tokens at which the best trial first reached its best val_loss."""
    points = next((c.points for c in trial_curves if c.run_id == row.run_id), [])
    return min(points, key=lambda point: point[1])[0] if points else row.tokens


def _cell(text: str) -> str:
    """`text` as one Markdown table cell: a pipe (the symbol |V|) would split it."""
    return text.replace("|", "\\|")


def summary_markdown(study: str, trial_curves: list[Curve], row: best_mod.TrialRow | None,
                     scores: dict[str, float], note: str, files: list[str], replay_cmd: str,
                     tokens: int) -> str:
    """A few lines a person reads first: counts, the best trial (None: every trial that ended
    diverged or failed), what mattered, the files."""
    counts: dict[str, int] = {}
    for c in trial_curves:
        counts[c.status] = counts.get(c.status, 0) + 1
    lines = [f"# Study {study}", "",
             f"{count(len(trial_curves), 'trial')} (" + ", ".join(f"{n} {s}" for s, n in
                                                        sorted(counts.items())) + f"), "
             f"{tokens:,} tokens trained in all.", ""]
    listed = ["## Files", "", *[f"- [{f}]({f})" for f in files], ""]
    if row is None:
        drawn = any(c.status == "diverged" and any(map(math.isfinite, (v for _, v in c.points)))
                    for c in trial_curves)  # a trial that diverged at its first evaluation: none
        return "\n".join([*lines, "## Best trial: none", "",
                          "Every trial that ended diverged or failed: none has a config worth "
                          "reproducing." + (f" {LOSS_PNG} shows where each diverged (×)."
                                            if drawn else ""), "", *listed])
    lines += [f"## Best trial: {row.trial_id}", "",
              (f"best val_loss **{row.val_loss:.4f}** (perplexity {row.perplexity:.2f}), "
               f"reached at {_reached_at(trial_curves, row):,} of the {row.tokens:,} tokens it "
               f"trained; MLflow run `{row.run_id}`."), "",
              *(["| parameter | value |", "|---|---|",
                 *[f"| {_cell(best_mod.symbol(n))} | {shown_value(n, v)} |"
                   for n, v in row.params.items()]]
                if row.params else ["The study searched no parameter: its file fixes each."]), "",
              ("PBT changed its values as it ran (those it ended with are shown): no one config "
               "reproduces it." if row.pbt else f"Reproduce it: `{replay_cmd}`"), "",
              "## What mattered (fANOVA)", ""]
    if scores:
        lines += [f"Over the {note}.", "", "| parameter | importance |", "|---|---|",
                  *[f"| {_cell(best_mod.symbol(n))} | {v:.2f} |" for n, v in scores.items()]]
    else:
        lines.append(f"Not computed: {note}.")
    return "\n".join([*lines, "", *listed])


def write_report(client: Any, study: str, out: Path, workdir: Path) -> list[Path]:
    """Write every plot and the summary to `out`, log them under report/ of the study's parent
    run, and return the files written."""
    from tuner.search.mlflow_layout import STUDY_PREFIX
    from tuner.search.outcome import UNRANKED

    parent = runs.study_parent(client, study)
    trial_runs = runs.trial_runs(client, parent)
    trial_curves = curves(client, trial_runs)
    try:
        best_run = runs.best_of(trial_runs, study)
    except UserError:
        if not any(c.status in UNRANKED for c in trial_curves):
            raise  # no trial has ended: nothing to show yet
        best_run = None  # every trial that ended diverged or failed: the curves show where
    row = best_mod.trial_row(client, best_run) if best_run else None
    recorded = runs.recorded_study(client, parent, workdir)["search"]
    opt_study, scores = None, {}
    if recorded["scheduler"] == "pbt":
        note = "PBT changed trials' values as they ran, so no values go with a loss"
    else:
        try:
            space = recorded_space(client, parent, workdir)
            points, at = equal_token_points(client, trial_runs, trial_curves, workdir)
            opt_study, scores = importances(space, points, recorded["mode"])
            note = (f"val_loss of the {len(points)} completed and stopped trials at their "
                    f"first evaluation from {at:,} tokens, the furthest all of them trained"
                    if scores else
                    "fewer than two finished trials, or no searched parameter varies")
        except (UserError, RuntimeError) as err:  # the other plots are still worth having
            note = str(err)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot be made a folder ({err.strerror or err})") from None
    figures = {LOSS_PNG: loss_figure(trial_curves, row.run_id if row else "")}
    if row is not None:
        config = runs.trial_config(client, best_run, workdir)
        logged_lr = runs.metric_points(client, row.run_id, "lr")
        schedule = logged_lr if row.pbt else lr_points(config, next(  # PBT: α_max changed
            c.points for c in trial_curves if c.run_id == row.run_id))
        figures[LR_PNG] = lr_figure(config, schedule, logged_lr,
                                    f"learning rate of the best trial ({row.trial_id})")
    if scores:
        figures[IMPORTANCE_PNG] = importance_figure(scores)
    written = []
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=110)
        written.append(out / name)
    if opt_study is not None and opt_study.trials:
        (out / PARALLEL_HTML).write_text(parallel_html(opt_study), encoding="utf-8")
        written.append(out / PARALLEL_HTML)
    replay_cmd = as_started(f"tuner replay {row.run_id} --tracking-uri "
                            f"{shlex.quote(redact(client.tracking_uri))}") if row else ""
    # the study's own count: a PBT clone's curve starts at its donor's tokens, not trained by it
    metrics = parent.data.metrics  # "tokens_trained": a study recorded before the study/ names
    tokens = metrics.get(f"{STUDY_PREFIX}tokens_trained", metrics.get(
        "tokens_trained", sum(c.points[-1][0] for c in trial_curves if c.points)))
    (out / SUMMARY_MD).write_text(summary_markdown(
        study, trial_curves, row, scores, note, [p.name for p in written], replay_cmd,
        int(tokens)))
    written.append(out / SUMMARY_MD)
    for path in written:
        client.log_artifact(parent.info.run_id, str(path), "report")
    return written
