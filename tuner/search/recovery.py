"""Resuming a study whose driver died inside one of Tune's two races with its own state.

Registering a trial's checkpoint deletes the one before it (`num_to_keep`), and Tune saves its
experiment state just after: a driver killed in between resumes naming the deleted checkpoint,
and Tune would fail the trial. The next checkpoint survives, and MLflow already holds its metrics
(results reach callbacks before their checkpoint is registered), so the trial goes on from it.

Tune copies its state files into the study's folder in place, from background threads: a driver
killed during a copy leaves a file cut short (Tune then restarts the whole study), or whole files
from two saves (the searcher then fails on a trial it never suggested). So the driver also keeps
the last whole state beside them, to put back on --resume.
"""

from __future__ import annotations

import json
import pickletools
import zipfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from pyarrow import fs
from ray import tune

from tuner.errors import UserError

CHECKPOINT_PREFIX = "checkpoint_"  # Tune's checkpoint folders: checkpoint_000000, ...
# Tune's state files, one of each per driver session (the newest is read); only the first is JSON
TUNE_STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl",
                    "callback-states-*.pkl", "basic-variant-state-*.json")
BACKUP = "tune_state.zip"


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
    """Tune callback: after each save of Tune's state, and at the study's end (Tune's last save
    comes after its last step), keep a whole copy of it in the study's folder. Tune has written
    it in its staging folder by then, and copies it on from there."""

    def __init__(self) -> None:
        self._kept: tuple[int, int] | None = None  # the kept experiment state's mtime and size

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._keep(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._keep(trials)

    def _keep(self, trials: list) -> None:
        if not trials:
            return
        storage = trials[0].storage  # Tune's paths, as it restored them
        staging, folder = (Path(storage.experiment_driver_staging_path),
                           Path(storage.experiment_fs_path))
        files = [path for path in (_newest(staging, p) for p in TUNE_STATE_FILES) if path]
        if not files or not fnmatch(files[0].name, TUNE_STATE_FILES[0]):
            return
        stat = files[0].stat()  # read each step: the state's content may be megabytes
        if (stat.st_mtime_ns, stat.st_size) == self._kept:
            return
        partial = folder / f".{BACKUP}.partial"
        with zipfile.ZipFile(partial, "w") as bundle:
            for path in files:
                bundle.write(path, path.name)
        partial.replace(folder / BACKUP)  # a driver killed while writing keeps the last one
        self._kept = (stat.st_mtime_ns, stat.st_size)


def restore_whole_state(folder: Path) -> bool:
    """Put the state kept whole back in `folder` where the state Tune would read there differs
    from it: cut short, or copied in part (each file whole, from two saves) when its driver was
    killed; whether it did. UserError naming a file cut short when no whole copy is kept."""
    newest = [path for path in (_newest(folder, p) for p in TUNE_STATE_FILES) if path is not None]
    try:
        with zipfile.ZipFile(folder / BACKUP) as bundle:
            kept = {name: bundle.read(name) for name in bundle.namelist()}
        if not kept or not all(any(fnmatch(name, p) for p in TUNE_STATE_FILES) for name in kept):
            raise zipfile.BadZipFile("not a copy of Tune's state")
    except (OSError, zipfile.BadZipFile) as err:  # a damaged entry fails its CRC on read
        damaged = [path for path in newest if not _whole(path)]
        if damaged:
            raise UserError(f"{damaged[0]}: cut short (its driver was killed while Tune wrote "
                            f"it), and no whole copy to put back ({folder / BACKUP}: {err}); the "
                            "study cannot be resumed: start it again with another --name") from None
        return False
    if {path.name: path.read_bytes() for path in newest} == kept:
        return False
    for name, data in kept.items():
        partial = folder / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(folder / name)
    for pattern in TUNE_STATE_FILES:  # a later session's files, which the copy predates
        for path in folder.glob(pattern):
            if path.name not in kept:
                path.unlink()
    return True


def _newest(folder: Path, pattern: str) -> Path | None:
    """The file Tune reads of those matching `pattern` (the latest session's), if any."""
    return max(folder.glob(pattern), default=None)


def _whole(path: Path) -> bool:
    """Whether Tune's state file `path` is whole: JSON that parses, or a pickle that reaches its
    end (walked, not loaded)."""
    data = path.read_bytes()
    try:
        if fnmatch(path.name, TUNE_STATE_FILES[0]):
            json.loads(data)
        else:
            for _ in pickletools.genops(data):
                pass
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    return True
