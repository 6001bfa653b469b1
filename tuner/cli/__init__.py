"""The `tuner` command line: one Typer app; each area registers its commands from its own module."""

from __future__ import annotations

import atexit
import gc
import os
import sys
import traceback
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from model.config import ConfigError
from model.shell import aborted, stop_requested, stops_as_ctrl_c
from tuner.errors import UserError, reason
from tuner.store.db_log import quiet_database_tracebacks
from tuner.store.redact import mask_log_records, redact, remember


class _Group(TyperGroup):
    """Typer's group, but Ctrl-C (outside a study's loop) ends in "aborted", not a silent 130."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise typer.Abort() from None


app = typer.Typer(
    cls=_Group,
    name="tuner",
    help="Tune the hyperparameters of a Transformer LM: Ray Tune trials, Optuna search, MLflow "
    "records.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    # Each module defines its commands on a Typer app of its own and imports heavy libraries lazily.
    from tuner.cli import data, search, space

    app.add_typer(data.app, name="data")
    app.add_typer(space.app, name="space")
    app.command("search")(search.search)
    from tuner.cli import inspect

    for name in ("replay", "best", "report", "generate"):
        app.command(name)(getattr(inspect, name))
    from tuner.cli import scale, ui

    app.command("scale")(scale.scale)
    from tuner.cli import probe

    app.command("probe")(probe.probe)

    app.command("ui")(ui.ui)


def _remember_uris(args: list[str]) -> None:
    """The tracking URIs of the command line and environment, masked in all tuner prints."""
    remember(os.environ.get("MLFLOW_TRACKING_URI"))
    for arg, value in zip(args, args[1:] + [""]):
        if arg == "--tracking-uri":
            remember(value)
        elif arg.startswith("--tracking-uri="):
            remember(arg.partition("=")[2])


def _skip_final_collection() -> None:
    """At exit: the interpreter's shutdown then skips the collector's passes over the million
    objects torch, Ray and MLflow leave (`tuner best` 3.2 → 2.4 CPU-seconds, `report` 5.0 → 3.6).
    Not once triton is loaded: its nanobind bindings would print each object they saw leaked."""
    if "triton" not in sys.modules:
        gc.freeze()


def _a_stop_in_disguise(exc: BaseException | None) -> bool:
    """Whether `exc` is a stop's KeyboardInterrupt that a library wrapped in an error of its own:
    pydantic-core, building a validator when the stop came, raises a SchemaError naming it in words."""
    if not stop_requested():
        return False
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def main() -> None:
    """Entry point: run the app; bad input exits 2 with one line that says what to fix."""
    atexit.unregister(_skip_final_collection)  # once, however often main runs in one process
    atexit.register(_skip_final_collection)  # last: run after every library's own handler
    stops_as_ctrl_c()
    # MLflow prints "View run … at: URL" for every run it ends on a server, credentials and all.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    _remember_uris(sys.argv[1:])
    mask_log_records()
    quiet_database_tracebacks()
    try:
        _register()  # half a second of imports, which Ctrl-C may cut as any other step
        result = app(standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        aborted()
    except typer.TyperException as exc:  # a usage error: Typer's own message names the option
        if hasattr(exc, "show"):
            exc.show()
        else:
            err.print(f"[bold red]error:[/] {escape(redact(str(exc)))}")
        sys.exit(exc.exit_code)
    except (UserError, ConfigError) as exc:
        err.print(f"[bold red]error:[/] {escape(redact(str(exc)))}")
        sys.exit(2)
    except OSError as exc:  # a path given that cannot be written or read (an --out, say)
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(f"[bold red]error:[/] {escape(redact(where + (exc.strerror or str(exc))))}")
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - a store failing mid-command, or a bug: no secrets
        if _a_stop_in_disguise(exc):
            aborted()
        mlflow_errors = sys.modules.get("mlflow.exceptions")
        if mlflow_errors and isinstance(exc, mlflow_errors.MlflowException):
            err.print(f"[bold red]error:[/] MLflow failed: {escape(redact(reason(exc)))}")
        else:  # MLflow's errors quote the URI they used; others may hold a URI too
            sys.stderr.write(redact(traceback.format_exc()))
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
