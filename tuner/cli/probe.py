"""`tuner probe`: an α range test of a study's model (tuner.probe), its curve and suggested α_max
range printed, then the batch advice of a short run at that α (B_simple and the B's around it),
and with --write both set in the study file."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from model.lr_probe import (  # no torch: it is imported once a sweep runs
    END_LR,
    NOISE_STEPS,
    START_LR,
    STEPS,
)
from model.shell import as_started
from tuner import output
from tuner.cli.args import folder
from tuner.store.redact import redact

ROWS_PER_DECADE = 2  # the printed curve: the step nearest each half-decade of α


def probe(
    space: Annotated[Path, typer.Option(
        "--space", help="study file (YAML)", dir_okay=False, show_default=False)],
    write: Annotated[bool, typer.Option(
        "--write", help="set the suggested range as α_max's loguniform range, and the suggested "
        "B's as B's choices, in the study file, its comments and layout kept")] = False,
    start: Annotated[float, typer.Option(help="the sweep's first α")] = START_LR,
    end: Annotated[float, typer.Option(help="the sweep's last α (it stops earlier where the "
                                       "loss diverges)")] = END_LR,
    steps: Annotated[int, typer.Option(help="steps from --start to --end")] = STEPS,
    noise_steps: Annotated[int, typer.Option(
        help="steps of the run at the suggested α that measures the gradient noise scale for "
        "the batch advice (0: none)")] = NOISE_STEPS,
    out: Annotated[Path | None, typer.Option(
        help="folder for probe.png (default: reports/probe/NAME)", parser=folder,
        metavar="<dir>", show_default=False)] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: the file's, else $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db)", show_default=False)] = None,
) -> int:
    """Train the study's model once with α growing exponentially until the loss diverges; print
    the loss against α and the α_max range it suggests; then train it at that α for
    --noise-steps, measuring the gradient noise scale B_simple, and print the B's around it that
    fit a trial's memory. Write probe.png and record an MLflow run. Exit 1 when the curve gives
    no α range (it says what to change)."""
    from tuner import api

    console = output.console()
    result = api.probe(space, start=start, end=end, steps=steps, noise_steps=noise_steps,
                       write=write, out=out, tracking_uri=tracking_uri,
                       warn=lambda text: console.print(f"warning: {text}", markup=False))
    curve, found, config = result.curve, result.found, result.config
    console.print(f"α range test of study {result.study}: B {config.batch_size}, d_model "
                  f"{config.model.d_model}, {config.optimizer}; {len(curve.points)} steps, "
                  f"{curve.tokens:,} tokens ({curve.tokens / result.study_tokens:.1%} of the "
                  f"study's {result.study_tokens:,}), "
                  + ("stopped where the loss diverged" if curve.diverged
                     else "reached --end without diverging"), markup=False)
    console.print(_curve_table(result))
    console.print(f"wrote {result.png}; MLflow run {result.run_id} "
                  f"({redact(result.tracking_uri)}, tag tuner.role = probe)", markup=False)
    if result.lo is None:
        console.print(f"no α_max range: {found.problem.replace('_', ' ')}; {found.advice}"
                      + ("; the study file was left as it was" if write else ""), markup=False)
        return 1
    console.print(f"suggested α_max: {{loguniform: [{result.lo:.2g}, {result.hi:.2g}]}}  (the "
                  f"loss falls fastest at {found.steepest:.2g} and is lowest at "
                  f"{found.lowest:.2g})", markup=False)
    if result.batch is not None:
        _print_batch_advice(console, result)
    if result.batch_unwritten:
        console.print(f"B's suggested choices were not written, α_max's range alone: "
                      f"{result.batch_unwritten}", markup=False)
    if result.written is not None:
        both = result.batch and result.batch.suggested and not result.batch_unwritten
        console.print(f"set {'them' if both else 'it'} in "
                      f"{result.written}: " + as_started(
                          f"tuner search --space {shlex.quote(str(result.written))}"),
                      markup=False)
    return 0


def _print_batch_advice(console, result) -> None:
    """B_simple along the short run, the B's it suggests beside the study's, and why none where
    it suggests none."""
    from tuner.probe.batch import OPTIMISES, choice_yaml
    from tuner.store.rows import shown_noise

    batch = result.batch
    along = " → ".join(shown_noise(noise) for _, noise in batch.points)
    share = batch.tokens / result.study_tokens
    console.print(f"batch advice: a run of {batch.tokens:,} tokens ({share:.1%} of the study's) "
                  f"at α {batch.lr:.2g} and B {batch.batch_size}; its gradient noise scale "
                  "B_simple (sequences) along it: "
                  f"{along or 'none measured'} (it grows as the loss falls)", markup=False)
    if batch.problem:
        console.print(f"no B suggested: {batch.problem}", markup=False)
        return
    table = Table("B", "B / B_simple", "", title="B against the measured B_simple")
    for b in sorted({*batch.study, *batch.suggested, *batch.too_few_steps}):
        marks = [mark for mark, yes in (("the study's", b in batch.study),
                                        ("suggested", b in batch.suggested),
                                        ("does not fit", b > batch.largest),
                                        ("too few steps for a trial",
                                         b in batch.too_few_steps)) if yes]
        table.add_row(str(b), f"{b / batch.noise_scale:.2g}", ", ".join(marks))
    console.print(table)
    console.print(f"suggested B: {choice_yaml(batch.suggested)}  (from "
                  f"B_simple/4 to 2·B_simple at {shown_noise(batch.noise_scale)}; a trial fits "
                  f"B up to {batch.largest} here: {batch.memory})", markup=False)
    console.print(OPTIMISES, markup=False)


def _curve_table(result) -> Table:
    """The step nearest each half-decade of α: its loss and smoothed loss, the range marked."""
    from model.lr_probe import zero_phase

    points = [p for p in result.curve.points if math.isfinite(p.loss)]
    lagless = zero_phase([p.loss for p in points]) if points else []
    table = Table("step", "α", "loss", "smoothed", "", title="loss against α")
    shown = set()
    for i, p in enumerate(points):
        mark = round(math.log10(p.lr) * ROWS_PER_DECADE)
        if mark in shown and i != len(points) - 1:
            continue
        shown.add(mark)
        inside = result.lo is not None and result.lo <= p.lr <= result.hi
        table.add_row(str(p.step), f"{p.lr:.2g}", f"{p.loss:.4f}", f"{lagless[i]:.4f}",
                      "in range" if inside else "")
    if len(points) < len(result.curve.points):
        last = result.curve.points[-1]
        table.add_row(str(last.step), f"{last.lr:.2g}", str(last.loss), "", "diverged")
    return table
