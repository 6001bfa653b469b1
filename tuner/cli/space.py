"""`tuner space`: check a study file, show its search space, print the study file's JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from model.config import RELATIVE_FORMS, ConfigError
from tuner import output
from tuner.errors import UserError
from tuner.space import SpaceError, Study, load_study, study_json_schema
from tuner.space.convert import candidates
from tuner.space.distributions import Distribution, fmt
from tuner.space.trial_length import check_trial_length
from tuner.store.redact import redact

app = typer.Typer(help="Check and show study files (search spaces).", no_args_is_help=True)
StudyPath = Annotated[Path, typer.Argument(help="study file (YAML)", show_default=False)]


def _print_errors(err: SpaceError) -> None:
    console = Console(stderr=True, highlight=False)
    for line in redact(str(err)).splitlines():  # escaped: messages contain [lo, hi]
        console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)


def _load(path: Path) -> Study:
    try:
        return load_study(path)
    except SpaceError as err:
        _print_errors(err)
        raise typer.Exit(2) from None


@app.command()
def validate(paths: Annotated[list[Path], typer.Argument(help="study files (YAML)",
                                                         show_default=False)]) -> None:
    """Check study files; exit 2 listing the problems with their YAML paths and lines (checks
    across fields run once every field is valid on its own)."""
    failed = False
    for path in paths:
        try:
            study = load_study(path)
            _check_dataset(study)
            check_trial_length(study)
        except SpaceError as err:
            _print_errors(err)
            failed = True
            continue
        except (UserError, ConfigError) as err:
            Console(stderr=True, highlight=False).print(
                f"[bold red]error:[/] {escape(redact(f'{path}: {err}'))}", soft_wrap=True)
            failed = True
            continue
        searched = ", ".join(study.searched()) or "nothing"
        typer.echo(f"{path}: ok: study {study.name} searches {searched} with "
                   f"{study.search.searcher} and {study.search.scheduler}, {_trials(study)}")
    if failed:
        raise typer.Exit(2)


def _trials(study: Study) -> str:
    """'10 trials'; a transfer study's '12 trials (4 samples at each d_model of 64, 128, 256)'."""
    text = output.count(study.trial_count, "trial")
    sizes = study.transfer()
    if sizes:
        text += (f" ({output.count(study.search.num_samples, 'sample')} at each {sizes[0]} of "
                 f"{', '.join(map(str, sizes[1]))})")
    return text


def _check_dataset(study: Study) -> None:
    """The checks `tuner search` makes of a prepared dataset folder (a source is prepared, and
    checked, when the study starts)."""
    from tuner.space.dataset_fit import check_study_dataset

    if study.data.path:
        check_study_dataset(study, Path(study.data.path).expanduser().resolve())


@app.command()
def show(path: StudyPath) -> None:
    """Show a study's parameters: symbol, name, value or distribution, valid range, description."""
    study = _load(path)
    console = output.console()
    narrow = console.width < 120  # symbol and name share a column, one above the other
    table = Table(title=f"study {study.name}", caption=escape(study.description) or None)
    for heading in (["symbol / name"] if narrow else ["symbol", "name"]):
        table.add_column(heading, no_wrap=True)
    table.add_column("value or distribution", overflow="fold")
    table.add_column("valid range")
    table.add_column("description", ratio=1, overflow="fold")
    for section in ("model", "hparams", "budget"):
        table.add_row(f"[bold]{section}[/]", end_section=False)
        for symbol, *rest in _rows(study, section):
            table.add_row(*([f"{symbol}\n[dim]{rest[0]}[/]", *rest[1:]] if narrow
                            else [symbol, *rest]))
        table.add_section()
    console.print(table)
    search, res = study.search, study.resources
    console.print(escape(
        f"data: {study.data.path or 'source ' + str(study.data.source)}\n"
        f"search: {search.searcher} + {search.scheduler}, "
        f"{_trials(study)}, "
        f"{search.mode} {search.metric}, at most {search.max_concurrent or 'any'} at once\n"
        f"resources: {fmt(res.cpus_per_trial)} CPU and {fmt(res.gpus_per_trial)} GPU per trial, "
        f"device {res.device}, compile {str(res.compile).lower()}\n"
        f"tracking: {redact(study.tracking.uri)}, experiment {study.tracking.experiment}"))


BUDGET_ALTERNATIVES = {"tokens": "total_iters", "eval_tokens": "eval_interval"}  # one or other


def _rows(study: Study, name: str) -> list[tuple[str, ...]]:
    section = getattr(study, name)
    given = section.model_fields_set
    pairs = {**RELATIVE_FORMS, **BUDGET_ALTERNATIVES}
    twins = {**pairs, **{second: first for first, second in pairs.items()}}
    rows = []
    for field, hp in type(section).defs.items():
        twin = twins.get(field)  # show one of each pair
        if twin in given and field not in given:
            continue
        if hp.when and not set(candidates(study, hp.when[0]) or []) & set(hp.when[1]):
            continue  # the study's optimizer or schedule never uses it
        rows.append((escape(hp.symbol), field,
                     _value(getattr(section, field), field in given), escape(hp.range_text()),
                     escape(_about(hp))))
    return rows


def _value(value: Any, given: bool) -> str:
    if isinstance(value, Distribution):
        return f"[bold cyan]{escape(str(value))}[/]"
    return escape(fmt(value)) if given else f"[dim]{escape(fmt(value))} (default)[/]"


def _about(hp: Any) -> str:
    return hp.description + (f" (if {hp.when[0]}: {', '.join(hp.when[1])})" if hp.when else "")


@app.command()
def schema(out: Annotated[Path | None, typer.Option("--out", "-o", help="write it to this file "
                                                     "instead of stdout")] = None) -> None:
    """Print the JSON Schema of a study file (for editors that check YAML as it is typed)."""
    text = json.dumps(study_json_schema(), indent=2, ensure_ascii=False)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")
