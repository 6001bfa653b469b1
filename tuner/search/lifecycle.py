"""A study from `tuner search` to its summary: new or resumed, checked, warm-started, run on Ray
Tune, recorded in MLflow (tuner.store), and summarised. `run` reads top to bottom.

Everything that can be wrong with the input (the space, the dataset, the tracking store, the study
name, the Ray address) is checked before Ray starts; a trial's resources against the Ray it
starts, and whether another driver runs the study, before the study is saved. Each is reported as
one line with exit code 2. Ray, torch and MLflow are imported only once needed: Ray after
`environment.configure`.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from model.shell import as_started
from tuner.errors import UserError, reason
from tuner.output import count
from tuner.search import preflight
from tuner.search.ended import EXIT_CODES, FAILED, FINISHED, INTERRUPTED, Ended
from tuner.search.state import lease, state, working_copy
from tuner.store import object_store
from tuner.store.layout import CURVE_TABLE_TAG, STOP_REASON_TAG
from tuner.store.uri import absolute_uri


@dataclass
class Request:
    """What `tuner search` was asked: the study file or name, and the options that override it."""

    space: Path | None
    name: str | None
    num_samples: int | None
    max_concurrent: int | None
    seed: int | None
    tracking_uri: str | None
    storage: str | Path  # a folder, or an object store's URI (tuner.store.object_store)
    address: str | None
    resume: bool
    warm_start: str | None
    study: Any = None  # a study given from Python (loaded, or a mapping), in place of --space
    quiet: bool = False  # print nothing: no warning, live view or summary
    curve_table: Path | None = None  # a benchmark's: trials answered from this table of curves


def run(request: Request) -> Ended:
    """Run (or resume) the study; how it ended (`Ended.exit_code`: 0 with a best trial, 1 with
    none or a store or disk failed mid-study, 130 when stopped)."""
    from tuner.search import environment

    environment.configure(local=request.address is None)
    console = Console(highlight=False, soft_wrap=True, quiet=request.quiet)

    def warn(text: str) -> None:
        console.print(f"[yellow]warning:[/] {escape(text)}")

    where = object_store.locate(request.storage)
    object_store.check(where)  # the store answers, takes the keys and has the bucket
    storage = where.local  # the driver's own files: the folder, or its working copy of the URI's
    resume, address = request.resume, request.address
    study, to_save = _open(request, where)
    table = _curve_table(request.curve_table, study)
    preflight.check_storage(storage)
    from tuner.search.run.address import check_address

    if address:
        check_address(address)
    else:
        preflight.check_local_resources(study, warn)
    from tuner.space.dataset_fit import study_dataset

    checked = study_dataset(study) if study.data.path else None  # a bad folder creates no store
    from tuner.space.trial_length import check_trial_length

    if not resume:  # after the memory's and dataset's checks, which say more; a study that
        check_trial_length(study)  # began under an older tuner still resumes

    from tuner.store.connect import connect, new_sqlite_store
    from tuner.store.runs import find_parent

    # Tune fails to restore a study stopped before any trial started: that one starts again
    restore = resume and state.ran_trials(storage / study.name)
    new_store = new_sqlite_store(study.tracking.uri)  # made once every input is known sound
    client = None if new_store else connect(study.tracking.uri)
    exists = None if client is None else find_parent(client, study.tracking.experiment,
                                                     study.name)
    if exists is not None and resume:
        _check_same_table(study, exists, table)
    stopped_flat = exists.data.tags.get(STOP_REASON_TAG) if restore and exists else None
    if stopped_flat and to_save is not None:
        raise UserError(f"study {study.name!r} {stopped_flat}: extended, it would stop again at "
                        "once. Run the samples it lacks as a new study that builds on it: tuner "
                        f"search --space FILE --name NEW --warm-start {study.name}")
    if restore and exists and exists.info.status == "FINISHED" and (
            _not_resumable(study) or stopped_flat):
        # Tune's state holds trials HyperBand paused at their full budget: restored, it would
        # train them on; a study stopped when flat ended for good. Nothing to resume.
        from tuner.search.run.console import print_summary
        from tuner.search.run.runner import summarise

        summary = summarise(study)
        print_summary(console, summary)
        return Ended(FINISHED, study, summary)
    _check_store(study, client, exists, resume=resume, restore=restore)
    warm_trials, warm_changes = (None, []) if restore else _warm_trials(study)
    if study.search.storage and not resume:
        from tuner.search.searchers.algorithms import check_storage_is_free

        check_storage_is_free(study)
    data_dir, meta = checked or study_dataset(study)  # a corpus to prepare: once the rest is sound
    from tuner.search.record.provenance import provenance

    made_of = provenance(data_dir, meta)
    if table is not None:
        table.check_dataset(made_of["dataset_sha256"])
        made_of[CURVE_TABLE_TAG] = f"{table.sha256} {table.path}"
    changed_code = preflight.check_same_inputs(exists, made_of, data_dir) if exists else None
    if changed_code:
        console.print(f"[yellow]warning:[/] {changed_code}")
    if restore:  # Tune's state cut short with no whole copy, or a checkpoint lost: refused.
        from tuner.search.state.recovery import check_named_checkpoints  # The last check: it puts

        check_named_checkpoints(storage / study.name)  # back the checkpoints it can
    if new_store:
        connect(study.tracking.uri)
    if warm_trials and not resume:
        console.print(f"warm start: {len(warm_trials)} finished trials of study "
                      f"{study.search.warm_start!r}")
        if warm_changes:
            console.print(f"[yellow]warning:[/] study {study.search.warm_start!r} trained "
                          f"otherwise ({escape('; '.join(warm_changes))}): its losses compare "
                          "with this study's only loosely")
    replay = None
    if table is not None:
        from tuner.search.trial.curve_replay import CurveReplay

        replay = CurveReplay(table)
    staged = None
    if where.remote:  # no disk shared with the nodes: each fetches the dataset from the store
        from tuner.dataset_stage import stage_for_trials

        staged = stage_for_trials(data_dir, where.uri, say=console.print)
    return _run_study(console, warn, study, data_dir, where, address=address, restore=restore,
                      provenance=made_of, overrides=to_save,
                      warm_trials=warm_trials, replay=replay, staged_dataset=staged)


def _curve_table(path: Path | None, study: Any) -> Any:
    """The table of curves or surrogate that answers the study's trials (None: they train),
    checked against the study; UserError naming the file when it is missing, damaged or of
    another study."""
    if path is None:
        return None
    from tuner.search.trial import curve_table, surrogate

    path = path.expanduser()
    if surrogate.is_surrogate(path):
        return surrogate.load(path).for_study(study)
    table = curve_table.load(path)
    table.check_study(study)
    return table


def _check_same_table(study: Any, parent: Any, table: Any) -> None:
    """UserError when a resumed study would go on otherwise than it started: replayed from
    another table, or trained where it was replayed, or replayed where it trained."""
    was = parent.data.tags.get(CURVE_TABLE_TAG, "").partition(" ")
    if was[0] != (table.sha256 if table is not None else ""):
        started = f"replayed from the curve table {was[2]}" if was[0] else "trained"
        raise UserError(f"study {study.name!r} {started}: resume it as it started"
                        + (f" (--curve-table {was[2]}, as it was then)" if was[0] else
                           ", without --curve-table"))


def _open(request: Request, where: object_store.Storage) -> tuple[Any, dict[str, Any] | None]:
    """The study: new from --space with the options' overrides, or resumed from its state under
    --storage, extended by a larger --num-samples (UserError when it is being driven, or another
    option changed); and the overrides to save with it (None: saved already)."""
    name, space, resume = request.name, request.study or request.space, request.resume
    overrides = {k: v for k, v in {
        "name": name, "num_samples": request.num_samples, "seed": request.seed,
        "max_concurrent": request.max_concurrent, "warm_start": request.warm_start,
        "tracking_uri": absolute_uri(request.tracking_uri)}.items() if v is not None}
    if resume and not name:
        if space is None:
            raise UserError("--resume needs --name NAME, or the --space file it ran: the study "
                            "to continue")
        from tuner.space import load_study

        # the file's name, else its stem, as a new study takes
        name = space.name if request.study else load_study(space).name
    from tuner.space.schema import NAME_RULE, STUDY_NAME

    if resume and not STUDY_NAME.fullmatch(name):  # it names the study's folder under --storage
        raise UserError(f"--name {name!r} {NAME_RULE}")
    if not resume:
        return _new_study(where, space, overrides), overrides
    from tuner.search.state.extension import extended

    storage = where.local
    state.check_not_driven(storage / name)
    lease.check_free(where, name)  # a driver on another machine
    working_copy.pull(where, name, whole=True)  # the checks of a resume read its checkpoints
    working_copy.check_found(where, name)
    study = state.load(storage / name, space)
    preflight.check_kept_settings(study, {k: v for k, v in overrides.items()
                                          if k != "num_samples"})  # which `extended` judges
    more = extended(study, request.num_samples, storage / name)
    if more is study:
        return study, None
    return more, {**state.saved_overrides(storage / name), "num_samples": more.search.num_samples}


def _check_store(study: Any, client: Any, exists: Any, *, resume: bool, restore: bool) -> None:
    """UserError when the tracking store does not fit the study: a resumed HyperBand study, a new
    study whose name is taken, a resumed one whose runs are gone."""
    if restore and exists and _not_resumable(study):
        raise UserError(f"study {study.name!r} uses HyperBand, whose brackets Ray Tune does not "
                        "save: resumed, it would wait for ever on the trials they paused. Start a "
                        f"new study with --warm-start {study.name} to build on its trials")
    if exists and not resume:
        raise UserError(f"MLflow experiment {study.tracking.experiment!r} at {study.tracking.uri} "
                        f"already holds a study {study.name!r}: resume it with --resume --name "
                        f"{study.name}, or pick another --name")
    if client is not None and not resume:
        preflight.check_name_free(client, study)
    if restore and not exists:
        raise UserError(f"MLflow experiment {study.tracking.experiment!r} at {study.tracking.uri} "
                        f"no longer holds study {study.name!r}, whose trials ran: put back the "
                        "tracking store it ran with, or start a new study with another --name")


def _run_study(console: Console, warn: Callable[[str], None], study: Any, data_dir: Path,
               storage: object_store.Storage, *, address: str | None, **run_args: Any) -> Ended:
    """Run the study on Ray Tune and print its summary, or how it stopped and how to continue it;
    how it ended."""
    from tuner.search.faults.node_watch import NodeLost
    from tuner.search.faults.storage_faults import StorageFull
    from tuner.search.record.tracking import TrackingLost
    from tuner.search.run.console import print_summary, quietly
    from tuner.search.run.local_ray import RayNotStarted
    from tuner.search.run.runner import run_study

    resume_hint = as_started(shlex.join([
        "tuner", "search", "--resume", "--name", study.name, "--storage", storage.shown(),
        *(["--address", address] if address else [])]))  # not saved: the cluster may move
    if _not_resumable(study):
        resume_hint = as_started(f"tuner search --space FILE --name NEW --warm-start {study.name}"
                                 ) + " (a HyperBand study cannot be resumed)"

    def failed(what: Any, ended: str = "; the study stopped, its runs ended",
               when: str = "") -> Ended:
        console.print(f"[bold red]error:[/] {escape(str(what))}{ended}")
        console.print(f"{when}continue it with: {resume_hint}", markup=False)
        return Ended(FAILED, study, None, f"{what}{ended}", resume_hint)

    def stuck(what: str) -> None:  # (from another thread: the driver waits on a GCS gone)
        end_runs(study)
        failed(what)
        sys.stdout.flush()
        os._exit(EXIT_CODES[FAILED])  # before Ray's client ends the process without a word

    try:
        with quietly(console.quiet):
            summary = run_study(study, data_dir, storage, address=address, warn=warn,
                                stuck=stuck, **run_args)
    except TrackingLost as err:
        return failed(err, "; the study stopped", "once the store answers again, ")
    except StorageFull as err:
        return failed(err, when="once there is room again, ")
    except NodeLost as err:
        return failed(err)
    except RayNotStarted as err:  # before any run was made or the study saved
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        return Ended(FAILED, study, None, str(err))
    except KeyboardInterrupt:
        from tuner.search.faults.stopping import stopped_at_once

        if not stopped_at_once():
            raise  # before the study was saved: "aborted", and nothing to resume
        stopped = second_stop(study)
        console.print(f"{stopped}; continue it with: {resume_hint}", markup=False)
        return Ended(INTERRUPTED, study, None, stopped, resume_hint)
    print_summary(console, summary)
    if summary.interrupted:
        console.print(f"continue it with: {resume_hint}", markup=False)
        return Ended(INTERRUPTED, study, summary, "stopped before its end", resume_hint)
    if summary.best_run_id and study.search.confirm:
        _confirm(console, study)
    return Ended(FINISHED, study, summary)  # no best: every trial failed or diverged


def _confirm(console: Console, study: Any) -> None:
    """The study's seed check (search.confirm), as `tuner best --confirm` runs it."""
    import tempfile

    from tuner.search.winners.seed_check import confirm
    from tuner.store.connect import connect

    settings = study.search.confirm
    console.print(f"seed check: the {settings.top} best completed trials, "
                  f"{count(settings.seeds, 'further seed')} each")
    with tempfile.TemporaryDirectory(prefix="tuner-confirm-") as tmp:
        result = confirm(connect(study.tracking.uri), study.name, settings.top, settings.seeds,
                         Path(tmp), lambda line: console.print(line, markup=False))
    for line in result.lines():
        console.print(f"  {line}", markup=False)


def end_runs(study: Any) -> None:
    """End the study's parent run and its RUNNING trial runs as a stop does (interrupted,
    KILLED), from the store: for a driver that cannot stop its study."""
    from tuner.store.connect import connect
    from tuner.store.layout import STATUS_TAG
    from tuner.store.runs import find_parent, trial_runs

    client = connect(study.tracking.uri)
    parent = find_parent(client, study.tracking.experiment, study.name)
    if parent is None:
        return
    for run in trial_runs(client, parent):
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, STATUS_TAG, "interrupted")
            client.set_terminated(run.info.run_id, "KILLED")
    client.set_terminated(parent.info.run_id, "KILLED")


def second_stop(study: Any) -> str:
    """End the runs a second stop left RUNNING (interrupted, KILLED, as a first stop ends them)
    and say so; unless the first stop had ended them already (it came as Ray shut down, say), or
    the store fails (they stay RUNNING until a resume)."""
    from tuner.store.connect import connect
    from tuner.store.runs import find_parent

    try:
        parent = find_parent(connect(study.tracking.uri), study.tracking.experiment, study.name)
        if parent is not None and parent.info.status != "RUNNING":
            return "stopped at once (a second stop), after its runs had ended"
        end_runs(study)
    except Exception as err:  # noqa: BLE001 - the store failing: the runs are as they were
        return (f"stopped at once (a second stop); its runs stay RUNNING until it is resumed "
                f"(the tracking store failed: {reason(err)})")
    return "stopped at once (a second stop); its runs ended as interrupted (KILLED)"


def _new_study(where: object_store.Storage, space: Any, overrides: dict[str, Any]) -> Any:
    """A new study from the --space file (or a study given from Python) and the options, its
    tracking URI made absolute; UserError when --storage holds one of its name already."""
    from tuner.space import Study, load_study

    if space is None:
        raise UserError("--space PATH is required (or --resume --name NAME to continue a study)")
    study = space if isinstance(space, Study) else load_study(space, overrides.get("name"))
    uri = overrides.get("tracking_uri", study.tracking.uri)  # "" too: the check names the flag
    if "tracking_uri" not in overrides and "uri" not in study.tracking.model_fields_set:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or uri  # as MLflow's own tools do
    study = study.with_overrides(**{**overrides, "tracking_uri": absolute_uri(uri)})
    working_copy.pull(where, study.name, whole=False)
    if state.started(where.local / study.name):
        carry_on = (f"build on it with --warm-start {study.name}" if _not_resumable(study)
                    else f"continue it with --resume --name {study.name}")
        raise UserError(f"study {study.name!r} already exists in {where.shown()}: {carry_on}, or pick "
                        "another --name")
    return study


def _not_resumable(study: Any) -> bool:
    """HyperBand's brackets are not in Tune's saved state: a resumed study would wait for ever on
    the trials they paused, so such a study is built on with --warm-start instead."""
    return study.search.scheduler == "hyperband"


def _warm_trials(study: Any) -> tuple[list[Any] | None, list[str]]:
    """The finished trials of the study named by search.warm_start, as Optuna trials of this
    study's space, and where that study trained otherwise (`history.setup_differences`); UserError
    when it has none or one does not fit the space."""
    earlier = study.search.warm_start
    if earlier is None:
        return None, []
    from tuner.search.searchers import history

    recorded, points, curves, stopped = history.earlier_study(earlier, study.tracking.uri)
    if not points:
        raise UserError(f"study {earlier!r} has no finished trials to warm-start from")
    return (history.optuna_trials(study, points, curves, stopped),
            history.setup_differences(recorded, study))
