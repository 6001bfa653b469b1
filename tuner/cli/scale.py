"""`tuner scale`: fit power laws of the best α_max and B in compute through finished studies at
several sizes, and predict them for a target model; `tuner best --study FIT` shows a fit."""

from __future__ import annotations

import json
import shlex
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from model.shell import as_started
from tuner import output
from tuner.cli.args import DEFAULT_URI, TrackingUri, folder
from tuner.errors import UserError
from tuner.scale.fit import FITTED, MARGIN
from tuner.store.redact import redact


def scale(
    study: Annotated[list[str], typer.Option(
        help="a finished study, one model size or budget (repeat: three or more)",
        show_default=False)],
    target_params: Annotated[int | None, typer.Option(
        min=1, help="N of the model to predict for (non-embedding parameters)",
        show_default=False)] = None,
    target_tokens: Annotated[int | None, typer.Option(
        min=1, help="D, the tokens it is to train", show_default=False)] = None,
    margin: Annotated[float, typer.Option(
        min=0.0, help="near-optimal trials: val_loss within this fraction of their study's best"
    )] = MARGIN,
    name: Annotated[str | None, typer.Option(
        help="the fit's name, for `tuner best --study NAME` (default: scale-FIRST_STUDY)",
        show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        help="folder for scaling.png and scaling.json (default: reports/scaling/NAME)",
        parser=folder, metavar="<dir>", show_default=False)] = None,
    tracking_uri: TrackingUri = DEFAULT_URI,
) -> int:
    """Fit α_max*(C) and B*(C) = a·C^b (C = 6·N·D FLOPs) through the near-optimal trials of
    finished studies, with bootstrap intervals and the prediction at --target-params and
    --target-tokens; write scaling.png and scaling.json and log them to a run of experiment
    `scaling`."""
    from tuner.scale import plot, record
    from tuner.scale.fit import fit_scaling
    from tuner.scale.studies import read_studies
    from tuner.space.schema import NAME_RULE, STUDY_NAME
    from tuner.store import runs
    from tuner.store.connect import connect_existing

    if (target_params is None) != (target_tokens is None):
        raise UserError("give both --target-params and --target-tokens (the target's N and D), "
                        "or neither")
    name = name or f"scale-{study[0]}"
    if not STUDY_NAME.fullmatch(name):
        raise UserError(f"--name {name!r} {NAME_RULE}")
    client = connect_existing(tracking_uri)
    if runs.study_parents(client, name):
        raise UserError(f"--name {name}: a study has that name; give the fit another")
    with tempfile.TemporaryDirectory(prefix="tuner-scale-") as tmp:
        studies = read_studies(client, study, Path(tmp))
    target = None if target_params is None else (target_params, target_tokens)
    fit = fit_scaling(studies, margin, target)
    data = record.fit_json(fit, name)
    where = out or Path("reports") / "scaling" / name
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {where}: cannot be made a folder ({err.strerror or err})") from None
    files = [where / record.SCALING_PNG, where / record.SCALING_JSON]
    plot.scaling_figure(fit).savefig(files[0], dpi=110)
    files[1].write_text(json.dumps(data, indent=2), encoding="utf-8")
    run_id = record.log_fit(client, data, files)
    console = output.console()
    console.print(_studies_table(data, fit.near))
    show_fit(console, data)
    console.print(f"wrote {files[0]} and {files[1]}; MLflow run {run_id} (experiment "
                  f"{record.SCALE_EXPERIMENT}, tag tuner.scale = {name})", markup=False)
    if data["prediction"]:
        console.print("a study file of the prediction: " + as_started(
            f"tuner best --study {name} --export {name}.yaml --tracking-uri "
            f"{shlex.quote(redact(client.tracking_uri))}"), markup=False)
    return 0


def _studies_table(data: dict[str, Any], near: dict[str, list[Any]]) -> Table:
    """Per study: N, D, C, best val_loss, near-optimal trials and their geometric-mean α and B."""
    import numpy as np

    table = Table("study", "N", "D", "C (FLOPs)", "best val_loss", "near-optimal",
                  *(f"{s}*" for s in FITTED.values()), title="the studies of the fit")
    for s in data["studies"]:
        trials = near[s["name"]]
        means = [f"{np.exp(np.mean([np.log(t.values[n]) for t in trials])):.4g}"
                 if n in s["searched"] else "not searched" for n in FITTED]
        table.add_row(s["name"], f"{s['params']:,}", f"{s['tokens']:,}", f"{s['compute']:.3g}",
                      f"{s['best_val_loss']:.4f}", f"{len(trials)} of {s['trials']}", *means)
    return table


def show_fit(console: Console, data: dict[str, Any]) -> None:
    """Print a fit's laws with their intervals, and its prediction."""
    for n, law in data["laws"].items():
        lo, hi = law["exponent_interval"] if law else (0, 0)
        console.print(f"{FITTED[n]}: not searched in any study, not fitted" if law is None else
                      f"{FITTED[n]}*(C) = {law['coefficient']:.4g}·C^{law['exponent']:.4f}   "
                      f"exponent 95% interval [{lo:.4f}, {hi:.4f}]   ({law['points']} "
                      "near-optimal trials)", markup=False)
        if law is not None and hi - lo < 1e-9:
            console.print("  the interval is 0 wide: each study's near-optimal trials share one "
                          "value, so resampling them varies nothing (run more trials, or widen "
                          "--margin)", markup=False)
    target = data["target"]
    if target is None:
        console.print("no prediction: give --target-params and --target-tokens for one",
                      markup=False)
        return
    console.print(f"prediction for N = {target['params']:,}, D = {target['tokens']:,} "
                  f"(C = {target['compute']:.3g} FLOPs):", markup=False)
    for n, p in data["prediction"].items():
        lo, hi = p["interval"]
        console.print(f"  {FITTED[n]} = {p['exported']}   95% interval [{lo:.4g}, {hi:.4g}]",
                      markup=False)


def best_of_fit(client: Any, run: Any, export: Path | None) -> int:
    """`tuner best --study FIT`: the fit's laws and prediction, and with --export its study file."""
    from tuner.scale.export import export_prediction
    from tuner.scale.record import read_fit

    console = output.console()
    with tempfile.TemporaryDirectory(prefix="tuner-best-") as tmp:
        data = (read_fit(client, run, Path(tmp)) if export is None else
                export_prediction(client, run, export, Path(tmp)))
    console.print(f"scaling fit {data['name']} (MLflow run {run.info.run_id}) of studies "
                  f"{', '.join(s['name'] for s in data['studies'])}", markup=False)
    show_fit(console, data)
    if export is not None:
        file = shlex.quote(str(export))
        console.print(f"wrote the prediction to {export} (the model is study "
                      f"{data['export']['study']}'s: set it to the target's): "
                      f"{as_started(f'tuner search --space {file}')}", markup=False)
    return 0
