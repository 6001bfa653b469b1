"""`tuner ui`: MLflow's UI on a study's tracking store, opened at the study's runs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from tuner.cli.args import DEFAULT_URI, TrackingUri
from tuner.store.redact import redact
from tuner.store.uri import server_address
from tuner.store.view import DEFAULT_HOST, DEFAULT_PORT


def ui(
    study: Annotated[str | None, typer.Option(
        help="the study to open (default: the store's only one; with several, a link to each)",
        show_default=False)] = None,
    tracking_uri: TrackingUri = DEFAULT_URI,
    port: Annotated[int, typer.Option(min=1, max=65535, help="port of the UI's server")
                    ] = DEFAULT_PORT,
    host: Annotated[str, typer.Option(
        help="address the UI's server listens on (0.0.0.0: every interface)")] = DEFAULT_HOST,
) -> int:
    """Serve MLflow's UI on the study's tracking store, and print the link to its runs ranked by
    best_val_loss (Ctrl-C stops it); on an `mlflow server` store, print the link on that server."""
    from tuner.inspect import ui as ui_mod
    from tuner.store import view
    from tuner.store.connect import connect_existing
    from tuner.store.runs import study_experiments

    client = connect_existing(tracking_uri)
    studies = study_experiments(client, study)
    remote = client.tracking_uri.startswith(("http://", "https://"))
    if not remote:
        ui_mod.check_port(host, port)
    for experiment_id in set(studies.values()):
        view.save_view(client, experiment_id)
    store = redact(client.tracking_uri)

    def print_links(base: str) -> None:
        how = "" if remote else " (Ctrl-C stops it)"
        if len(studies) == 1:
            typer.echo(f"MLflow's UI on {store} at {base}{how}")
        else:
            held = "" if studies else "; the store holds no study"
            typer.echo(f"MLflow's UI on {store}: {view.experiments_url(base)}{how}{held}")
        for name, experiment_id in studies.items():
            typer.echo(f"study {name}, its runs ranked by best_val_loss: "
                       f"{view.runs_url(base, experiment_id)}")

    if remote:
        print_links(server_address(client.tracking_uri))
        return 0
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        ui_mod.serve(client.tracking_uri, host, port, ready=print_links)
    except ui_mod.ServerFailed as failure:
        err.print(f"[bold red]error:[/] {escape(str(failure))}; its last lines:")
        err.print("\n".join(failure.tail), markup=False)
        return 1
    except KeyboardInterrupt:
        err.print("stopped MLflow's UI")
        return 130
