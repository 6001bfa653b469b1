"""Resuming a study whose driver died inside one of Tune's two races with its own state.

Registering a trial's checkpoint deletes the one before the one before it (`num_to_keep=2`), and
Tune saves its experiment state just after. Studies that kept one checkpoint per trial, killed in
between, resume naming a deleted checkpoint, and Tune would fail the trial: it goes on from the
next checkpoint, whose metrics MLflow already holds (results reach callbacks before their
checkpoint is registered).

Tune copies its state files into the study's folder in place, from background threads, so the
driver also keeps a whole copy of each save there (`tuner.search.tune_state`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pyarrow import fs
from ray import tune

from tuner.search.tune_state import SCHEDULER_STATE, keep

CHECKPOINT_PREFIX = "checkpoint_"  # Tune's checkpoint folders: checkpoint_000000, ...
ENDED = ("TERMINATED", "ERROR")  # Tune's statuses of trials a resume does not run again


class CheckpointRepair(tune.Callback):
    """Tune callback: before a trial restores, put back the checkpoint its state names if it is
    gone, from the one registered after it."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.checkpoint is not None:
            repair(trial.checkpoint.filesystem, trial.checkpoint.path)


def repair(files: fs.FileSystem, path: str) -> bool:
    """Copy the next whole checkpoint folder beside `path` to it if `path` holds no checkpoint
    (deleted, or emptied by a kill inside Tune's deletion); whether it did."""
    path = path.rstrip("/")
    if _holds_checkpoint(files, path):
        return False
    folder, name = path.rsplit("/", 1)
    later = sorted(info.path for info in files.get_file_info(fs.FileSelector(folder))
                   if info.type == fs.FileType.Directory and info.base_name > name
                   and info.base_name.startswith(CHECKPOINT_PREFIX)
                   and _holds_checkpoint(files, info.path))
    if not later:
        return False  # nothing to go on from: Tune fails the trial, naming its missing checkpoint
    partial = f"{folder}/.partial-{name}"  # a kill while copying leaves `path` as it was
    try:
        for stale in (partial, path):
            if files.get_file_info(stale).type != fs.FileType.NotFound:
                files.delete_dir(stale)
        files.create_dir(partial)
        fs.copy_files(later[0], partial, source_filesystem=files, destination_filesystem=files)
        files.move(partial, path)
    except OSError:
        return False  # the same: one trial fails, not the study
    return True


def _holds_checkpoint(files: fs.FileSystem, folder: str) -> bool:
    from model.checkpoint import CHECKPOINT_NAME

    return files.get_file_info(f"{folder}/{CHECKPOINT_NAME}").type == fs.FileType.File


class StateBackup(tune.Callback):
    """Tune callback: in each save of Tune's state, once its own files are written and before
    they are copied to the study's folder, keep a whole copy of them there (so the copy is never
    older than the folder's files). Tune asks each callback for its state at that point.

    Tune saves no scheduler state, so the callback saves that of ASHA (its rungs' results) and of
    the median rule (each trial's results) too, and puts it back when a resumed study takes its
    first step: `scheduler` is the study's own object (one pickle with the Tuner keeps them the
    same object when Tune restores it).

    Trials keep two checkpoints: the last save's state may name the one before the latest, and a
    trial resumed from the latest would skip the evaluation that Tune, its searcher and scheduler
    have not seen (one its scheduler stopped it at, say). Once a save records a trial as ended
    (completed, stopped, or failed past its retries), the callback deletes its earlier one."""

    _ended: tuple = ()  # trials whose earlier checkpoint is not deleted yet (a class default: a
    # study started before it existed restores this callback from its pickle, without it)

    def __init__(self, scheduler: Any = None) -> None:
        from ray.tune.schedulers import AsyncHyperBandScheduler

        from tuner.search.median_rule import ResumableMedianStoppingRule

        saves = (AsyncHyperBandScheduler, ResumableMedianStoppingRule)
        self.scheduler = scheduler if isinstance(scheduler, saves) else None
        self._paths: tuple[str, str] | None = None  # Tune's staging folder, the study's folder

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended += (trial,)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended += (trial,)  # past its retries: a resume does not restart it

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if trials and self._paths is None:  # Tune's paths, as it restored them
            storage = trials[0].storage
            self._paths = storage.experiment_driver_staging_path, storage.experiment_fs_path
            saved = Path(storage.experiment_fs_path) / SCHEDULER_STATE
            if self.scheduler is not None and saved.is_file():  # a resumed study
                self.scheduler.restore(str(saved))

    def get_state(self) -> None:  # None: it has nothing of its own for Tune to save
        if self._paths is None:
            return
        staging, folder = map(Path, self._paths)
        if self.scheduler is not None:
            partial = staging / f".{SCHEDULER_STATE}.partial"
            self.scheduler.save(str(partial))
            partial.replace(staging / SCHEDULER_STATE)
        keep(staging, folder)
        # This save records them as ended: a resume no longer needs their earlier checkpoint.
        # (Should Tune not copy it, `--resume` puts back the copy just kept.)
        self._prune_ended()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._prune_ended()  # those that ended after the last save

    def _prune_ended(self) -> None:
        for trial in self._ended:
            if trial.status in ENDED:
                _keep_latest_checkpoint(Path(trial.storage.trial_fs_path))
        self._ended = tuple(t for t in self._ended if t.status not in ENDED)


def _keep_latest_checkpoint(trial_dir: Path) -> None:
    """Delete each checkpoint folder of a trial but its latest."""
    for earlier in sorted(trial_dir.glob(f"{CHECKPOINT_PREFIX}*"))[:-1]:
        shutil.rmtree(earlier, ignore_errors=True)
