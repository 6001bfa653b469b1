"""Resuming a study whose driver died inside one of Tune's two races with its own state.

Registering a trial's checkpoint deletes the one before the one before it (`num_to_keep=2`), and
Tune saves its experiment state just after. Studies that kept one checkpoint per trial, killed in
between, resume naming a deleted checkpoint, and Tune would fail the trial: it goes on from the
next checkpoint, whose metrics MLflow already holds (results reach callbacks before their
checkpoint is registered).

Tune copies its state files into the study's folder in place, from background threads, so the
driver also keeps a whole copy of each save there (`tuner.search.state.tune_state`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ray import tune

from tuner.errors import UserError
from tuner.search.state.tune_state import BACKUP, SCHEDULER_STATE, experiment_state, keep

CHECKPOINT_PREFIX = "checkpoint_"  # Tune's checkpoint folders: checkpoint_000000, ...
ENDED = ("TERMINATED", "ERROR")  # Tune's statuses of trials a resume does not run again


class CheckpointRepair(tune.Callback):
    """Tune callback: before a trial restores, put back the checkpoint its state names if it is
    gone or not whole, from the one registered after it; and an empty folder for each earlier one
    its state still lists but a kill left deleted, which Tune deletes (again) at the trial's next
    checkpoint and logs a traceback for if it is missing."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # An object store's study was repaired as the driver pulled it (check_named_checkpoints),
        # and a "folder" there is only a prefix, which Tune's deletion does not miss.
        if trial.checkpoint is None or remote(trial):
            return
        repair(Path(trial.checkpoint.path))
        for listed in trial.run_metadata.checkpoint_manager.best_checkpoint_results:
            Path(listed.checkpoint.path).mkdir(exist_ok=True)


def repair(named: Path) -> bool:
    """Copy the next whole checkpoint folder beside `named` to it if `named` holds no whole
    checkpoint (deleted, emptied by a kill inside Tune's deletion, cut short); whether it did."""
    stand_in = None if _whole(named) else _later_whole(named, checksums=False)
    # None: whole, or nothing to go on from (refused by --resume before Ray starts)
    return stand_in is not None and _put_back(named, stand_in)


def _put_back(named: Path, stand_in: Path) -> bool:
    """Replace the checkpoint folder `named` with a copy of `stand_in`; whether it did."""
    partial = named.with_name(f".partial-{named.name}")  # a kill while copying leaves `named`
    try:
        for stale in (partial, named):
            shutil.rmtree(stale, ignore_errors=True)
        shutil.copytree(stand_in, partial)
        partial.rename(named)
    except OSError:
        return False  # Tune fails the trial, naming its checkpoint: one trial, not the study
    return True


def check_named_checkpoints(folder: Path) -> None:
    """Before Ray starts: put back, from a later whole one, each checkpoint an unfinished trial of
    the study in `folder` would resume from that is missing or not whole (its bytes checked);
    UserError naming it, with nothing changed, where no later one is whole."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    from model.checkpoint import CHECKPOINT_NAME, checkpoint_problem

    named: dict[Path, str] = {}  # checkpoint folder -> the trial resuming from it
    for trial_json, run in experiment_state(folder).get("trial_data", []):
        trial = json.loads(trial_json)
        latest = _TrainingRunMetadata.from_json_state(run).checkpoint_manager \
            .latest_checkpoint_result
        if trial.get("status") not in ENDED and latest is not None:
            where = Path(latest.checkpoint.path)  # as the study ran: Tune moves it with the folder
            named[folder / where.parent.name / where.name] = trial.get("trial_id")
    stand_ins: dict[Path, Path] = {}  # each file read once: checksums read them whole
    for path, trial_id in named.items():
        problem = checkpoint_problem(path / CHECKPOINT_NAME, checksums=True)
        if problem is None:
            continue
        stand_in = _later_whole(path, checksums=True)
        if stand_in is None:
            raise UserError(
                f"{path / CHECKPOINT_NAME}: {problem}. Trial {trial_id} would resume from it, and "
                "it has no later whole checkpoint: put back a whole copy, or start a new study "
                f"with another --name (--warm-start {folder.name} builds on this one's finished "
                "trials)")
        stand_ins[path] = stand_in
    for path, stand_in in stand_ins.items():  # only once none is refused: nothing changed then
        _put_back(path, stand_in)


def _later_whole(named: Path, checksums: bool) -> Path | None:
    """The first whole checkpoint folder after `named`, if any."""
    later = sorted(path for path in named.parent.glob(f"{CHECKPOINT_PREFIX}*")
                   if path.name > named.name and path.is_dir())
    return next((path for path in later if _whole(path, checksums)), None)


def _whole(folder: Path, checksums: bool = False) -> bool:
    from model.checkpoint import CHECKPOINT_NAME, checkpoint_problem

    return checkpoint_problem(folder / CHECKPOINT_NAME, checksums) is None


class StateBackup(tune.Callback):
    """Tune callback: in each save of Tune's state, once its own files are written and before
    they are copied to the study's folder, keep a whole copy of them there (so the copy is never
    older than the folder's files). Tune asks each callback for its state at that point.

    Tune saves no scheduler state, so the callback saves that of ASHA and PASHA (its rungs'
    results, PASHA's curves and top rung), of the median rule (each trial's results) and of
    top-K (each trial's val_loss at its budget) too, and puts it back when a resumed study takes its
    first step: `scheduler` is the study's own object (one pickle with the Tuner keeps them the
    same object when Tune restores it).

    Trials keep two checkpoints: the last save's state may name the one before the latest, and a
    trial resumed from the latest would skip the evaluation that Tune, its searcher and scheduler
    have not seen (one its scheduler stopped it at, say). Once a save records a trial as ended
    (completed, stopped, or failed past its retries), a resume runs it no more: the callback
    deletes its checkpoints, and the mid-trial copy the `recorder` kept, once the recorder logs
    none of them (the study's best keeps its latest until the study ends); without a recorder
    (PBT, whose clones may go on from an ended trial's checkpoint) it deletes the earlier one."""

    # Class defaults: a study started before they existed restores this callback from its pickle
    _ended: tuple = ()  # ended trials whose checkpoints are not all deleted yet
    recorder: Any = None

    def __init__(self, scheduler: Any = None, recorder: Any = None) -> None:
        from ray.tune.schedulers import AsyncHyperBandScheduler

        from tuner.search.searchers.median_rule import ResumableMedianStoppingRule
        from tuner.search.searchers.topk import TopK

        saves = (AsyncHyperBandScheduler, ResumableMedianStoppingRule, TopK)
        self.scheduler = scheduler if isinstance(scheduler, saves) else None
        self.recorder = recorder  # the study's MlflowRecorder: one pickle keeps them together
        self._paths: tuple[str, str] | None = None  # Tune's staging folder, the study's folder

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended += (trial,)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended += (trial,)  # past its retries: a resume does not restart it

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if trials and self._paths is None:  # Tune's paths, as it restored them
            storage = trials[0].storage
            self._paths = storage.experiment_driver_staging_path, storage.experiment_fs_path
            self._filesystem = storage.storage_filesystem
            staging, folder = self._paths  # (from an object store, Tune's restore fetched the
            saved = Path(staging if remote(trials[0]) else folder) / SCHEDULER_STATE  # state)
            if self.scheduler is not None and saved.is_file():  # a resumed study
                self.scheduler.restore(str(saved))
            # a resumed study's trials that ended before the kill, maybe with checkpoints left
            self._ended += tuple(t for t in trials if t.status in ENDED)

    def get_state(self) -> None:  # None: it has nothing of its own for Tune to save
        if self._paths is None:
            return
        staging, folder = map(Path, self._paths)
        if self.scheduler is not None:
            partial = staging / f".{SCHEDULER_STATE}.partial"
            self.scheduler.save(str(partial))
            partial.replace(staging / SCHEDULER_STATE)
        _keep(staging, self._filesystem, str(folder))
        # This save records them as ended: a resume no longer needs their earlier checkpoint.
        # (Should Tune not copy it, `--resume` puts back the copy just kept.)
        self._prune_ended()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._prune_ended()  # those that ended after the last save

    def _prune_ended(self) -> None:
        pending = [trial for trial in self._ended if trial.status not in ENDED]
        for trial in (t for t in self._ended if t.status in ENDED):
            logged = self.recorder is not None and not self.recorder.keeps_checkpoint(
                trial.trial_id)
            _delete_checkpoints(trial.storage, keep_latest=not logged)
            if logged:
                shutil.rmtree(self.recorder.mid_checkpoint(trial).parent, ignore_errors=True)
            elif self.recorder is not None:
                pending.append(trial)  # asked again at the next save: the best may change
        self._ended = tuple(pending)


def _keep(staging: Path, filesystem: Any, folder: str) -> None:
    """`keep`'s whole copy of Tune's state in `staging`, written where Tune keeps the study
    before Tune copies its files there: in place in a local folder, or as one object in an
    object store (which writes each object whole)."""
    from pyarrow.fs import LocalFileSystem, copy_files

    if filesystem.type_name == "local":
        keep(staging, Path(folder))
        return
    keep(staging, staging)
    if (staging / BACKUP).is_file():
        copy_files(str(staging / BACKUP), f"{folder}/{BACKUP}",
                   source_filesystem=LocalFileSystem(), destination_filesystem=filesystem)


def remote(trial: Any) -> bool:
    """Whether Tune keeps the trial's study in an object store, not a local folder."""
    return trial.storage.storage_filesystem.type_name != "local"


def _delete_checkpoints(storage: Any, keep_latest: bool) -> None:
    """Delete a trial's checkpoint folders where Tune keeps them (its StorageContext `storage`),
    or all but its latest."""
    from pyarrow.fs import FileSelector, FileType

    fs = storage.storage_filesystem
    folders = sorted(info.path for info in fs.get_file_info(FileSelector(
        storage.trial_fs_path, allow_not_found=True)) if info.type == FileType.Directory
        and info.base_name.startswith(CHECKPOINT_PREFIX))
    for folder in folders[:-1] if keep_latest else folders:
        try:
            fs.delete_dir(folder)
        except OSError:
            pass  # gone already
