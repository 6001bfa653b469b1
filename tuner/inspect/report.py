"""`tuner report`: a study as pictures and pages: val_loss curves of every trial, the best
trial's learning rate, fANOVA parameter importance, parallel coordinates, a transfer study's
α–loss curve per size, a markdown summary and study.html, which holds them all with a sortable
table of the trials."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

from model.config import TrainConfig, parse_yaml
from model.shell import as_started
from tuner.errors import UserError
from tuner.inspect import plots
from tuner.inspect.findings import NO_BEST, Findings
from tuner.inspect.importance import Curve, importance, values_at_equal_tokens
from tuner.inspect.plots import IMPORTANCE_PNG, LOSS_PNG, LR_PNG, PARALLEL_PNG, TRANSFER_PNG
from tuner.search.searchers import history
from tuner.space.params import shown_value, symbol
from tuner.store import runs
from tuner.store.redact import redact
from tuner.store.rows import TrialRow, noise_text, trial_row
from tuner.store.transfer import Transfer, read_transfer

SUMMARY_MD, STUDY_HTML = "summary.md", "study.html"


def curves(client: Any, trial_runs: list[Any]) -> list[Curve]:
    """The val_loss history of every trial run."""
    from tuner.store.layout import STATUS_TAG, TRIAL_TAG

    return [Curve(r.data.tags.get(TRIAL_TAG, r.info.run_id), r.info.run_id,
                  r.data.tags.get(STATUS_TAG, "?"),
                  runs.metric_points(client, r.info.run_id, "val_loss")) for r in trial_runs]


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


def searched_values(client: Any, trial_runs: list[Any], rows: list[TrialRow], workdir: Path,
                    space: Any) -> dict[str, dict[str, Any]]:
    """The values the searcher gave each trial that can be the best (its searched.json), by run
    id; of a transfer study, those of the trials at its first size, the searcher's, without it."""
    usable = {row.run_id for row in rows if row.usable}
    sizes = space.transfer()
    found = {r.info.run_id: history.searched(client, r, workdir) for r in trial_runs
             if r.info.run_id in usable}
    if sizes is None:
        return found
    field, proxy = sizes[0], sizes[1][0]
    return {run_id: {k: v for k, v in values.items() if k != field}
            for run_id, values in found.items() if values.get(field) == proxy}


def parallel_trials(space: Any, rows: list[TrialRow],
                    searched: dict[str, dict[str, Any]]) -> list[tuple[str, Any]]:
    """(trial id, Optuna trial of its searched values and best val_loss) of each trial that can
    be the best, best first."""
    usable = [row for row in rows if row.run_id in searched]
    trials = history.optuna_trials(space, [(searched[row.run_id], row.val_loss)
                                           for row in usable])
    return [(row.trial_id, trial) for row, trial in zip(usable, trials)]


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


def _cell(text: str) -> str:
    """`text` as one Markdown table cell: a pipe (the symbol |V|) would split it."""
    return text.replace("|", "\\|")


def summary_markdown(found: Findings, files: list[str]) -> str:
    """A few lines a person reads first: counts, the best trial (none: every trial that ended
    diverged or failed) and its margin, what mattered, the files."""
    lines = [f"# Study {found.study}", "", found.counts(), ""]
    listed = ["## Files", "", *[f"- [{f}]({f})" for f in files], ""]
    row = found.best
    if row is None:
        drawn = any(c.status == "diverged" and c.finite()
                    for c in found.curves)  # a trial that diverged at its first evaluation: none
        return "\n".join([*lines, "## Best trial: none", "",
                          NO_BEST + (f" {LOSS_PNG} shows where each diverged (×)."
                                     if drawn else ""), "", *listed])
    noise = noise_text(row)
    lines += [f"## Best trial: {row.trial_id}", "",
              f"{found.winner()} MLflow run `{row.run_id}`.", "",
              *([f"Gradient noise scale: {noise} ({plots.NOISE_PNG}).", ""] if noise else []),
              *(["| parameter | value |", "|---|---|",
                 *[f"| {_cell(symbol(n))} | {shown_value(n, v)} |"
                   for n, v in row.params.items()]]
                if row.params else ["The study searched no parameter: its file fixes each."]), "",
              ("PBT changed its values as it ran (those it ended with are shown): no one config "
               "reproduces it." if row.pbt else f"Reproduce it: `{found.replay_cmd}`"), "",
              *(["## Seed check", "", *[f"- {line}" for line in found.seed_check], ""]
                if found.seed_check else []),
              "## What mattered (fANOVA)", ""]
    imp = found.importance
    if imp is not None:
        lines += [f"Over the {found.note}; the range is {imp.spread()}.", "",
                  "| parameter | importance | range |", "|---|---|---|",
                  *[f"| {_cell(symbol(n))} | {v:.2f} | {imp.low[n]:.2f}–"
                    f"{imp.high[n]:.2f} |" for n, v in imp.scores.items()]]
    else:
        lines.append(f"Not computed: {found.note}.")
    if found.transfer is not None:
        lines += ["", *transfer_markdown(found.transfer)]
    return "\n".join([*lines, "", *listed])


def transfer_markdown(transfer: Transfer) -> list[str]:
    """A transfer study's section: whether the best value held, and each size's best."""
    field, axis = symbol(transfer.field), symbol(transfer.axis)
    rows = []
    for size in transfer.sizes:
        best = transfer.best(size)
        rows.append(f"| {size} | {shown_value(transfer.axis, best.values[transfer.axis])} | "
                    f"{best.loss:.4f} | {best.trial_id} |" if best else f"| {size} | – | – | – |")
    verdict = transfer.verdict()
    return [f"## Transfer over {_cell(field)}", "",
            f"{verdict[0].upper()}{verdict[1:]} ({TRANSFER_PNG}; the "
            f"searcher learnt from {field}={transfer.sizes[0]}).", "",
            f"| {_cell(field)} | best {_cell(axis)} | val_loss | trial |", "|---|---|---|---|",
            *rows]


def read_findings(client: Any, study: str, parent: Any, trial_runs: list[Any], workdir: Path
                  ) -> tuple[Findings, list[tuple[str, Any]]]:
    """What the report says of the study, and its trials for parallel coordinates."""
    from tuner.search.winners import seed_check as confirm
    from tuner.store.layout import STOP_REASON_TAG, STUDY_PREFIX, UNRANKED

    trial_curves = curves(client, trial_runs)
    try:
        runs.best_of(trial_runs, study)
    except UserError:
        if not any(c.status in UNRANKED for c in trial_curves):
            raise  # no trial has ended: nothing to show yet
    points = {c.run_id: c.points for c in trial_curves}
    rows = [trial_row(client, r, points[r.info.run_id]) for r in runs.ranked(trial_runs)]
    recorded = runs.recorded_study(client, parent, workdir)
    search = recorded["search"]
    found, parallel = None, []
    if search["scheduler"] == "pbt":
        note = "PBT changed trials' values as they ran, so no values go with a loss"
    else:
        try:
            space = recorded_space(client, parent, workdir)
            searched = searched_values(client, trial_runs, rows, workdir, space)
            values, at = values_at_equal_tokens([c for c in trial_curves if c.run_id in searched])
            found = importance(space, [(searched[r], v) for r, v in values.items()],
                               search["mode"], at)
            sizes = space.transfer()
            proxy = f" at {sizes[0]}={sizes[1][0]} (the searcher's)" if sizes else ""
            note = (f"val_loss of the {len(values)} completed and stopped trials{proxy} at "
                    f"their first evaluation from {at:,} tokens, the furthest all of them "
                    "trained" if found else
                    "fewer than two finished trials, or no searched parameter varies")
            parallel = parallel_trials(space, rows, searched)
        except (UserError, RuntimeError) as err:  # the other plots are still worth having
            note = str(err)
    # the study's own count: a PBT clone's curve starts at its donor's tokens, not trained by it
    metrics = parent.data.metrics  # "tokens_trained": a study recorded before the study/ names
    tokens = metrics.get(f"{STUDY_PREFIX}tokens_trained", metrics.get(
        "tokens_trained", sum(c.points[-1][0] for c in trial_curves if c.points)))
    transfer = read_transfer(recorded, rows)
    checked = confirm.recorded(client, parent)
    findings = Findings(study, trial_curves, rows, found, note, "", int(tokens), transfer,
                        checked.lines() if checked else [],
                        parent.data.tags.get(STOP_REASON_TAG, ""))
    if findings.best is not None:
        findings.replay_cmd = as_started(f"tuner replay {findings.best.run_id} --tracking-uri "
                                         f"{shlex.quote(redact(client.tracking_uri))}")
    return findings, parallel


def figures(client: Any, found: Findings, parallel: list[tuple[str, Any]],
            trial_runs: list[Any], workdir: Path) -> dict[str, Any]:
    """Each figure of the report by file name."""
    made = {LOSS_PNG: plots.loss_figure(found.curves, [r for r in found.rows if r.usable])}
    row = found.best
    if row is not None:
        run = next(r for r in trial_runs if r.info.run_id == row.run_id)
        config = runs.trial_config(client, run, workdir)
        logged_lr = runs.metric_points(client, row.run_id, "lr")
        schedule = logged_lr if row.pbt else lr_points(config, next(  # PBT: α_max changed
            c.points for c in found.curves if c.run_id == row.run_id))
        made[LR_PNG] = plots.lr_figure(schedule, logged_lr, config.schedule,
                                       f"learning rate of the best trial ({row.trial_id})")
    if found.importance is not None:
        made[IMPORTANCE_PNG] = plots.importance_figure(found.importance)
    if parallel:
        reached = [found.reached_at(r) for r in found.rows if r.usable]
        made[PARALLEL_PNG] = plots.parallel_figure(parallel, (min(reached), max(reached)))
    if found.transfer is not None:
        made[TRANSFER_PNG] = plots.transfer_figure(found.transfer)
    leaders = [r for r in found.rows if r.usable][:plots.LEADERS]
    noise = [(r, runs.metric_points(client, r.run_id, "noise_scale")) for r in leaders]
    if any(points for _, points in noise):
        made[plots.NOISE_PNG] = plots.noise_figure(noise)
    return made


def write_report(client: Any, study: str, out: Path, workdir: Path) -> list[Path]:
    """Write every plot, the summary and study.html to `out`, log them under report/ of the
    study's parent run, and return the files written."""
    from tuner.inspect.study_page import study_html

    parent = runs.study_parent(client, study)
    trial_runs = runs.trial_runs(client, parent)
    found, parallel = read_findings(client, study, parent, trial_runs, workdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot be made a folder ({err.strerror or err})") from None
    written = []
    for name, fig in figures(client, found, parallel, trial_runs, workdir).items():
        fig.savefig(out / name, dpi=110)
        written.append(out / name)
    names = [p.name for p in written]
    (out / SUMMARY_MD).write_text(summary_markdown(found, [STUDY_HTML, *names]),
                                  encoding="utf-8")
    (out / STUDY_HTML).write_text(study_html(found, written), encoding="utf-8")
    written += [out / SUMMARY_MD, out / STUDY_HTML]
    for path in written:
        client.log_artifact(parent.info.run_id, str(path), "report")
    return written
