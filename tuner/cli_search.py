"""`tuner search`: a Ray Tune study of the trainer, recorded in MLflow; `--resume` continues one.

Everything that can be wrong with the input (the space, the dataset, the tracking store, the study
name, the Ray address) is checked before Ray starts; a trial's resources against the Ray it
starts, and whether another driver runs the study, before the study is saved. Each is reported as
one line with exit code 2.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from model.shell import as_started
from tuner.cli import folder
from tuner.errors import UserError
from tuner.store_uri import absolute_uri


def search(
    space: Annotated[Path | None, typer.Option(
        "--space", help="study file (YAML); optional with --resume", dir_okay=False)] = None,
    name: Annotated[str | None, typer.Option(
        help="study name (default: the --space file's)")] = None,
    num_samples: Annotated[int | None, typer.Option(min=1, help="trials to run")] = None,
    max_concurrent: Annotated[int | None, typer.Option(min=1, help="trials at once")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="seed of the searcher")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: the file's, else $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db)")] = None,
    storage: Annotated[Path, typer.Option(
        help="folder for Ray Tune's trial state and checkpoints", parser=folder, metavar="<dir>",
    )] = Path("ray_results"),
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to run on (default: a local Ray on this machine)")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="continue the study NAME after its driver stopped")] = False,
    warm_start: Annotated[str | None, typer.Option(
        "--warm-start", metavar="STUDY", help="start the searcher from the finished trials of "
        "an earlier study with the same space, in the same tracking store")] = None,
) -> int:
    """Run a study: Ray Tune schedules trials of the trainer and MLflow records every run."""
    from tuner.search import environment, state

    environment.configure(local=address is None)
    console = Console(highlight=False, soft_wrap=True)

    def warn(text: str) -> None:
        console.print(f"[yellow]warning:[/] {escape(text)}")

    storage = storage.expanduser().resolve()
    overrides = {k: v for k, v in dict(name=name, num_samples=num_samples, seed=seed,
                                       max_concurrent=max_concurrent, warm_start=warm_start,
                                       tracking_uri=absolute_uri(tracking_uri)).items()
                 if v is not None}
    if resume and not name:
        if space is None:
            raise UserError("--resume needs --name NAME, or the --space file it ran: the study "
                            "to continue")
        from tuner.space import load_study

        name = load_study(space).name  # the file's name, else its stem, as a new study takes
    from tuner.space.schema import NAME_RULE, STUDY_NAME

    if resume and not STUDY_NAME.fullmatch(name):  # it names the study's folder under --storage
        raise UserError(f"--name {name!r} {NAME_RULE}")
    if resume:
        state.check_not_driven(storage / name)
        study = state.load(storage / name, space)
        _check_kept_settings(study, overrides)
    else:
        study = _new_study(storage, space, overrides)
    _check_storage(storage)
    from tuner.search.address import check_address
    from tuner.search.runner import run_study

    if address:
        check_address(address)
    else:
        _check_local_resources(study, warn)
    checked = _dataset(study) if study.data.path else None  # a bad folder creates no store

    from tuner.search.mlflow_layout import connect, find_parent
    from tuner.search.provenance import provenance
    from tuner.search.storage_faults import StorageFull
    from tuner.search.tracking import TrackingLost

    # Tune fails to restore a study stopped before any trial started: that one starts again
    restore = resume and state.ran_trials(storage / study.name)
    new_store = _new_sqlite_store(study.tracking.uri)  # made once every input is known sound
    client = None if new_store else connect(study.tracking.uri)
    exists = None if client is None else find_parent(client, study.tracking.experiment,
                                                     study.name)
    if restore and exists and exists.info.status == "FINISHED" and _not_resumable(study):
        # Tune's state holds trials HyperBand paused at their full budget: restored, it would
        # train them on. The study ended: nothing to resume.
        from tuner.search.console import print_summary
        from tuner.search.runner import summarise

        summary = summarise(study)
        print_summary(console, summary)
        return 0 if summary.best_run_id else 1
    if restore and exists and _not_resumable(study):
        raise UserError(f"study {study.name!r} uses HyperBand, whose brackets Ray Tune does not "
                        "save: resumed, it would wait for ever on the trials they paused. Start a "
                        f"new study with --warm-start {study.name} to build on its trials")
    if exists and not resume:
        raise UserError(f"MLflow experiment {study.tracking.experiment!r} at {study.tracking.uri} "
                        f"already holds a study {study.name!r}: resume it with --resume --name "
                        f"{study.name}, or pick another --name")
    if client is not None and not resume:
        _check_name_free(client, study)
    if restore and not exists:
        raise UserError(f"MLflow experiment {study.tracking.experiment!r} at {study.tracking.uri} "
                        f"no longer holds study {study.name!r}, whose trials ran: put back the "
                        "tracking store it ran with, or start a new study with another --name")
    warm_trials, warm_changes = (None, []) if restore else _warm_trials(study)
    if study.search.storage and not resume:
        from tuner.search.algorithms import check_storage_is_free

        check_storage_is_free(study)
    data_dir, meta = checked or _dataset(study)  # a corpus to prepare: once the rest is sound
    made_of = provenance(data_dir, meta)
    changed_code = _check_same_inputs(exists, made_of, data_dir) if exists else None
    if changed_code:
        console.print(f"[yellow]warning:[/] {changed_code}")
    if restore:  # Tune's state cut short with no whole copy, or a checkpoint lost: refused.
        from tuner.search.recovery import check_named_checkpoints  # The last check: it puts

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
    from tuner.search.console import print_summary

    resume_hint = as_started(shlex.join([
        "tuner", "search", "--resume", "--name", study.name, "--storage", str(storage),
        *(["--address", address] if address else [])]))  # not saved: the cluster may move
    if _not_resumable(study):
        resume_hint = as_started(f"tuner search --space FILE --name NEW --warm-start {study.name}"
                                 ) + " (a HyperBand study cannot be resumed)"
    try:
        summary = run_study(study, data_dir, storage, address=address, restore=restore,
                            provenance=made_of,
                            overrides=None if resume else overrides, warm_trials=warm_trials,
                            warn=warn)
    except TrackingLost as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}; the study stopped")
        console.print(f"once the store answers again, continue it with: {resume_hint}",
                      markup=False)
        return 1
    except StorageFull as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}; the study stopped, its runs ended")
        console.print(f"once there is room again, continue it with: {resume_hint}", markup=False)
        return 1
    except KeyboardInterrupt:
        from tuner.search.stopping import stopped_at_once

        if not stopped_at_once():
            raise  # before the study was saved: "aborted", and nothing to resume
        console.print(f"{second_stop(study)}; continue it with: {resume_hint}", markup=False)
        return 130
    print_summary(console, summary)
    if summary.interrupted:
        console.print(f"continue it with: {resume_hint}", markup=False)
        return 130
    return 0 if summary.best_run_id else 1  # every trial failed or diverged: nothing to replay


def second_stop(study: Any) -> str:
    """What a second stop left: the runs RUNNING, unless the first stop had ended them already
    (it came as Ray shut down, say)."""
    from tuner.search.mlflow_layout import connect, find_parent

    try:
        parent = find_parent(connect(study.tracking.uri), study.tracking.experiment, study.name)
    except Exception:  # noqa: BLE001 - the store failing: what it holds is unknown
        parent = None
    if parent is not None and parent.info.status != "RUNNING":
        return "stopped at once (a second stop), after its runs had ended"
    return "stopped at once (a second stop): its runs stay RUNNING until it is resumed"


def _check_kept_settings(study: Any, overrides: dict[str, Any]) -> None:
    """UserError naming each option a resumed study is given with another value than it started
    with; the same value (the interrupted command retyped) is accepted."""
    import json

    from tuner.space.schema import OVERRIDES

    changed = []
    for key, value in overrides.items():
        if key == "name":  # it named the study
            continue
        section, field = OVERRIDES[key]
        was = getattr(getattr(study, section), field)
        if value != was:
            changed.append(f"--{key.replace('_', '-')} was {json.dumps(was)}, is "
                           f"{json.dumps(value)} now")
    if changed:
        raise UserError(f"a resumed study keeps the settings it started with (its searcher's "
                        f"state depends on them): {'; '.join(changed)}. Retype the values it "
                        "started with, or leave the options out; to build on it with other "
                        f"settings, start a new study with --warm-start {study.name}")


def _check_same_inputs(parent: Any, made_of: dict[str, Any], data_dir: Path) -> str | None:
    """A resumed study trains on the data it started with (UserError otherwise); other code is
    only warned of (returned) and recorded (tuner.git_commit_resumed)."""
    from tuner.search.provenance import dataset_digests

    started_on = parent.data.tags.get("tuner.dataset_sha256")
    # an older tuner recorded the hash of meta.json whole: only then is the folder hashed again
    same = (not started_on or started_on == made_of["dataset_sha256"]
            or started_on in dataset_digests(data_dir))
    if not same:
        raise UserError(f"{data_dir}: the dataset changed since study {parent.info.run_name!r} "
                        f"started (sha256 {made_of['dataset_sha256'][:12]}…, it recorded "
                        f"{started_on[:12]}…): put that dataset back, or start a new study")
    started_with = parent.data.tags.get("tuner.git_commit")
    if started_with and started_with != made_of["git_commit"]:
        return (f"the code is at {made_of['git_commit']}, the study started at {started_with}: "
                "the trials it starts from now run this code")
    return None


def _check_name_free(client: Any, study: Any) -> None:
    """UserError when another experiment of the store holds a study of this name: `tuner best`,
    `report` and `replay --study` find a study by its name alone."""
    from tuner.inspect.runs import study_parents

    taken = study_parents(client, study.name)
    if taken:
        experiment = client.get_experiment(taken[0].info.experiment_id).name
        raise UserError(f"MLflow experiment {experiment!r} at {study.tracking.uri} already holds "
                        f"a study {study.name!r} (the tuner's commands find a study by its name): "
                        "pick another --name")


def _check_local_resources(study: Any, warn: Callable[[str], None]) -> None:
    """UserError when a trial needs a GPU where torch sees none, more CPUs or GPUs than this
    machine has, or more memory than it will have (`warn`: some sampled sizes cannot fit):
    before a store or a corpus is made (`capacity_shortage` checks the local Ray's own count
    again once it has started)."""
    need, gpus = study.resources.gpus_per_trial, 0
    if need > 0:
        import torch

        gpus = torch.cuda.device_count()  # the visible ones (CUDA_VISIBLE_DEVICES), as Ray's
        if gpus == 0:
            why = "is a CPU build" if torch.version.cuda is None else "sees no GPU on this machine"
            raise UserError(f"resources.gpus_per_trial: a trial needs {need:g} GPU, but torch "
                            f"{why}; to train on the CPU, set device: cpu and gpus_per_trial: 0")
    if "RAY_OVERRIDE_RESOURCES" in os.environ:  # Ray counts what it says instead
        return
    from ray._private.utils import get_num_cpus  # cgroup limits included, as Ray counts

    from tuner.search.memory_fit import check_memory
    from tuner.search.runner import shortage

    cpus = float(get_num_cpus())
    why = shortage(study.resources, [{"CPU": cpus, "GPU": float(gpus)}], None)
    if why:
        raise UserError(why)
    check_memory(study, cpus, warn)


def _check_storage(storage: Path) -> None:
    """UserError unless `storage` is, or can be made as, a folder this user can write to."""
    existing = next(folder for folder in (storage, *storage.parents) if folder.exists())
    try:  # made and removed: permissions alone pass root, even in /proc
        os.rmdir(tempfile.mkdtemp(prefix=".tuner-probe-", dir=existing))
    except OSError:
        raise UserError(f"--storage {storage}: {existing} is not a folder this user can write "
                        "to") from None


def _new_sqlite_store(uri: str) -> bool:
    """Whether `uri` is a sqlite file that does not exist yet; UserError if it cannot be made, or
    is a database of something else."""
    from tuner.store_uri import sqlite_file

    path = sqlite_file(uri)
    if path is None:
        return False
    if path.exists():
        from tuner.inspect.runs import holds_mlflow_tables

        if path.stat().st_size and not holds_mlflow_tables(path, uri):  # MLflow adds its own
            raise UserError(f"tracking store {uri}: {path} is another database, not an MLflow "
                            "store; pass a new file or an MLflow store")
        return False
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise UserError(f"tracking store {uri} cannot be used: {path.parent} is not a folder "
                        "this user can write to")
    return True


def _new_study(storage: Path, space: Path | None, overrides: dict[str, Any]) -> Any:
    from tuner.search import state
    from tuner.space import load_study

    if space is None:
        raise UserError("--space PATH is required (or --resume --name NAME to continue a study)")
    study = load_study(space, overrides.get("name"))
    uri = overrides.get("tracking_uri", study.tracking.uri)  # "" too: the check names the flag
    if "tracking_uri" not in overrides and "uri" not in study.tracking.model_fields_set:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or uri  # as MLflow's own tools do
    study = study.with_overrides(**{**overrides, "tracking_uri": absolute_uri(uri)})
    if state.started(storage / study.name):
        carry_on = (f"build on it with --warm-start {study.name}" if _not_resumable(study)
                    else f"continue it with --resume --name {study.name}")
        raise UserError(f"study {study.name!r} already exists in {storage}: {carry_on}, or pick "
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
    from tuner.inspect import history

    recorded, points = history.earlier_study(earlier, study.tracking.uri)
    if not points:
        raise UserError(f"study {earlier!r} has no finished trials to warm-start from")
    return history.optuna_trials(study, points), history.setup_differences(recorded, study)


def _dataset(study: Any) -> tuple[Path, dict[str, Any]]:
    """The dataset folder (data.path, or prepared now from data.source) and its meta.json."""
    from tuner.datasets import check_study_dataset, prepare_dataset

    if study.data.path:
        data_dir = Path(study.data.path).expanduser().resolve()
    else:
        data_dir = Path(prepare_dataset(**study.data.prepare_kwargs())).resolve()
    return data_dir, check_study_dataset(study, data_dir)
