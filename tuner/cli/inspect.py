"""`tuner replay`, `tuner best`, `tuner report`, `tuner generate`: reproduce and inspect a study."""

from __future__ import annotations

import math
import shlex
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from model.shell import as_started
from tuner import output
from tuner.cli.args import DEFAULT_URI, TrackingUri, check_new_file, folder
from tuner.errors import UserError
from tuner.store.redact import redact

NOISE_COLUMN = "B_simple"  # `tuner best`'s column of each trial's gradient noise scale at its end


def _num(value: float) -> str:
    return repr(value) if math.isfinite(value) else ("diverged" if value > 0 else "–")


def replay(
    run_id: Annotated[str | None, typer.Argument(
        metavar="TRIAL", help="the trial: its MLflow run id, trial id or run name (default: the "
        "best trial of --study)", show_default=False)] = None,
    study: Annotated[str | None, typer.Option(help="study whose best trial to replay")] = None,
    tracking_uri: TrackingUri = DEFAULT_URI,
    from_checkpoint: Annotated[bool, typer.Option(
        "--from-checkpoint", help="start from the trial's mid-trial checkpoint")] = False,
    device: Annotated[str | None, typer.Option(
        help="torch device (default: the trial's)")] = None,
    deterministic: Annotated[bool, typer.Option(
        "--deterministic", help="deterministic kernels, so that this replay repeats exactly")
    ] = False,
    tolerance: Annotated[float | None, typer.Option(
        min=0.0, help="largest relative val_loss difference accepted (default: 0 for a CPU trial "
        "on a CPU and a deterministic GPU trial on the same GPU model, else 0.01)",
        show_default=False)] = None,
    data: Annotated[Path | None, typer.Option(
        help="the dataset folder, if it moved since the study (its hash must match)",
        file_okay=False)] = None,
) -> int:
    """Train a trial again from its MLflow record and compare val_loss at every logged point."""
    from tuner import api

    console, err = output.console(), Console(stderr=True, highlight=False, soft_wrap=True)

    def announce(plan: Any) -> None:
        for warning in plan.warnings:
            err.print(f"[yellow]warning:[/] {warning}")
        start = f"its mid-trial checkpoint ({plan.resume_tokens:,} tokens)" if plan.resume_from \
            else "scratch"
        run = plan.run
        console.print(f"replaying run {run.info.run_id} ({run.info.run_name}) from {start} on "
                      f"{plan.config.device} …")

    result = api.replay(run_id, study=study, tracking_uri=tracking_uri,
                        from_checkpoint=from_checkpoint, device=device,
                        deterministic=deterministic, tolerance=tolerance, data=data,
                        announce=announce)
    table = Table("tokens", "original val_loss", "replayed val_loss", "|difference|")
    for p in result.points:
        table.add_row(f"{p.tokens:,}", _num(p.original), _num(p.replayed), repr(p.abs_diff),
                      style=None if p.within(result.tolerance) else "red")
    console.print(table)
    verdict = "within" if result.ok else "[red]exceeds[/]"
    console.print(f"largest absolute difference: {result.max_abs_diff!r} ({verdict} the "
                  f"tolerance {result.tolerance:g}, relative)")
    console.print(f"replay recorded as run {result.replay_run_id} (tag tuner.replay_of = "
                  f"{result.run_id})")
    return 0 if result.ok else 1


def best(
    study: Annotated[str, typer.Option(help="study name", show_default=False)],
    top: Annotated[int, typer.Option(min=1, help="how many trials to list")] = 5,
    export: Annotated[Path | None, typer.Option(
        help="write the best trial as a fixed study file (runs as one trial of `tuner search`)",
        dir_okay=False)] = None,
    confirm: Annotated[int | None, typer.Option(
        "--confirm", min=1, metavar="K", help="train the K best completed trials again with "
        "--seeds further seeds each, and say whether the winner's lead exceeds the seed noise",
        show_default=False)] = None,
    seeds: Annotated[int | None, typer.Option(
        min=1, max=100, help="further seeds per trial, with --confirm  [default: 3]",
        show_default=False)] = None,
    register: Annotated[str | None, typer.Option(
        metavar="NAME", help="register the best trial as a new version of the MLflow registered "
        "model NAME (its checkpoint, tokenizer and config; loads with mlflow.pyfunc.load_model)",
        show_default=False)] = None,
    data: Annotated[Path | None, typer.Option(
        help="with --register: the dataset folder with the tokenizer, if it moved since the study",
        file_okay=False)] = None,
    tracking_uri: TrackingUri = DEFAULT_URI,
) -> int:
    """The top trials of a study: searched hyperparameters by symbol, val_loss, tokens, status;
    their seed check when the study has one (--confirm runs it); the best one registered as an
    MLflow model (--register)."""
    from tuner import api
    from tuner.inspect import best as best_mod
    from tuner.space.params import shown_value, symbol
    from tuner.store import runs
    from tuner.store.connect import connect_existing
    from tuner.store.rows import noise_text, shown_noise

    if seeds is not None and confirm is None:
        raise UserError(f"--seeds {seeds} needs --confirm K: it is how many seeds the seed check "
                        "of the K best trials trains each with")
    if export is not None:  # before the table
        check_new_file("--export", export)
    console = output.console()
    client = connect_existing(tracking_uri)
    if register is not None:  # before the table, and before --confirm trains
        from tuner.store.registry import check_name

        check_name(client, register)
    if (fit := runs.scale_fit(client, study)) is not None:  # a `tuner scale` fit: its prediction
        from tuner.cli.scale import best_of_fit

        return best_of_fit(client, fit, export)
    rows = api.top_trials(study, top, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="tuner-best-") as tmp:  # a transfer study's sizes
        leader, transfer = best_mod.top_trials(client, study, 1, Path(tmp))
    names = list(dict.fromkeys(n for r in rows for n in r.params))
    symbols = [symbol(n) for n in names]
    values = [[shown_value(n, r.params.get(n, "–")) for n in names] for r in rows]
    if any(r.noise_scale is not None for r in rows):  # beside the searched values, B among them
        symbols.append(NOISE_COLUMN)
        for shown, r in zip(values, rows):
            shown.append("–" if r.noise_scale is None else shown_noise(r.noise_scale))
    title = f"study {study}: {output.count(len(rows), 'best trial')}"
    if rows and not rows[0].usable:
        title = f"study {study}: no trial to reproduce (each diverged or failed)"
    table = Table("#", "trial", *symbols, "val_loss", "perplexity", "tokens", "status", "run id",
                  title=title)
    for i, (r, shown) in enumerate(zip(rows, values), 1):
        table.add_row(str(i), r.trial_id, *shown, f"{r.val_loss:.4f}", f"{r.perplexity:.2f}",
                      f"{r.tokens:,}", r.status, r.run_id)
    if console.measure(table, options=console.options.update_width(10_000)).maximum \
            <= console.width:
        console.print(table)
    else:  # a table squeezed into a narrow terminal would cut its values: one block per trial
        console.print(title, markup=False)
        for i, (r, shown) in enumerate(zip(rows, values), 1):
            params = "  ".join(f"{symbol}={value}" for symbol, value in zip(symbols, shown))
            console.print(f"{i}. trial {r.trial_id}  {r.status}  val_loss {r.val_loss:.4f}  "
                          f"perplexity {r.perplexity:.2f}  tokens {r.tokens:,}\n   {params}\n"
                          f"   run id {r.run_id}", markup=False)
    if leader and leader[0].usable and leader[0].noise_scale is not None:
        console.print(f"best trial {leader[0].trial_id}: {noise_text(leader[0])}", markup=False)
    if transfer is not None:
        for table in _transfer_tables(transfer):
            console.print(table)
    if confirm is not None:
        checked = api.confirm(study, top=confirm, seeds=seeds or 3, tracking_uri=tracking_uri,
                              progress=lambda line: console.print(line, markup=False))
    else:
        checked = api.confirmation(study, tracking_uri)
    if checked is not None:
        console.print("seed check (final val_loss; each trial's own run is one seed):",
                      markup=False)
        for line in checked.lines():
            console.print(f"  {line}", markup=False)
    if register is not None:
        done = api.register(study, register, tracking_uri=tracking_uri, data=data)
        console.print(f"registered trial {done.trial_id} as version {done.version} of MLflow model "
                      f"{done.model} ({redact(client.tracking_uri)}): "
                      f"mlflow.pyfunc.load_model({done.uri!r}).predict([\"Once upon a time\"])",
                      markup=False)
    if export is not None:
        with tempfile.TemporaryDirectory(prefix="tuner-best-") as tmp:
            row = best_mod.export_best(client, study, export, Path(tmp))
        file = shlex.quote(str(export))
        console.print(f"wrote trial {row.trial_id} to {export}: "
                      f"{as_started(f'tuner search --space {file}')}   or   "
                      f"{as_started(f'python -m model.train --config {file}')}",
                      markup=False)
        if redact(client.tracking_uri) != client.tracking_uri:
            console.print(f"{export} names the tracking store with its credentials as ***: put "
                          "them back, or set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
                          markup=False)
    return 0


def _transfer_tables(transfer: Any) -> list[Table]:
    """A transfer study's best values at each size, and every sample's val_loss at each size (the
    α–loss curves as numbers; each size's best in bold)."""
    from tuner.space.params import shown_value, symbol

    samples, bests = transfer.samples(), {size: transfer.best(size) for size in transfer.sizes}
    names = list(samples[0]) if samples else []
    field = symbol(transfer.field)
    best = Table(field, "best trial", *map(symbol, names), "val_loss",
                 title=f"the best {symbol(transfer.axis)} at each {field}",
                 caption=f"{field}={transfer.sizes[0]}: the searcher's proxy")
    for size, point in bests.items():
        best.add_row(str(size), *([point.trial_id, *(shown_value(n, point.values[n])
                                                     for n in names), f"{point.loss:.4f}"]
                                  if point else ["none", *("–" for _ in names), "–"]))
    curves = Table(*map(symbol, names), *(f"{field}={s}" for s in transfer.sizes),
                   title=f"val_loss by {symbol(transfer.axis)} and {field}")
    for values in samples:
        cells = []
        for size, top in bests.items():
            loss = transfer.loss(size, values)
            text = "–" if loss is None else "diverged" if math.isinf(loss) else f"{loss:.4f}"
            cells.append(f"[bold]{text}[/]" if top and top.values == values else text)
        curves.add_row(*(shown_value(n, values[n]) for n in names), *cells)
    return [best, curves]


def report(
    study: Annotated[str, typer.Option(help="study name", show_default=False)],
    out: Annotated[Path | None, typer.Option(
        help="folder for the files (default: reports/STUDY)", parser=folder, metavar="<dir>",
        show_default=False)] = None,
    tracking_uri: TrackingUri = DEFAULT_URI,
) -> int:
    """Plots of a study (val_loss curves, lr schedule, importance, parallel coordinates), a
    markdown summary and study.html (all of them on one page, with a sortable table of the
    trials), written to --out and logged to the study's parent run."""
    from tuner import api
    from tuner.inspect.report import STUDY_HTML

    files = api.report(study, out, tracking_uri)
    folder = files[-1].parent  # study.html's, as every file's
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"wrote {len(files)} files to {folder} (also under report/ of the study's "
                  "parent run):")
    for path in files:
        console.print(f"  {path}")
    console.print(f"open {folder / STUDY_HTML} in a browser: the summary, every figure and a "
                  "table of the trials on one page")
    return 0


def generate(
    prompt: Annotated[str, typer.Option(help="text to continue", show_default=False)],
    run: Annotated[str | None, typer.Option(
        help="the trial whose checkpoint to use: its MLflow run id, trial id or run name")] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="checkpoint file or folder", exists=False)] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="most tokens to add")] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 picks the likeliest token")] = 0.8,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="nucleus sampling mass")] = 0.95,
    seed: Annotated[int, typer.Option(min=0, max=2**64 - 1, help="seed of the sampler")] = 0,
    data: Annotated[Path | None, typer.Option(
        help="dataset folder with the tokenizer (default: the one the model trained on)",
        file_okay=False)] = None,
    device: Annotated[str, typer.Option(help="torch device")] = "auto",
    tracking_uri: TrackingUri = DEFAULT_URI,
) -> int:
    """Continue a prompt with a trained model: a trial run's checkpoint or a checkpoint file."""
    from tuner import api

    text = api.generate(run, prompt, checkpoint=checkpoint, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, seed=seed, data=data, device=device,
                        tracking_uri=tracking_uri)
    typer.echo(prompt + text)
    return 0
