"""Resuming a study whose driver died inside one of Tune's two races with its own state.

Registering a trial's checkpoint deletes the one before it (`num_to_keep`), and Tune saves its
experiment state just after: a driver killed in between resumes naming the deleted checkpoint,
and Tune would fail the trial. The next checkpoint survives, and MLflow already holds its metrics
(results reach callbacks before their checkpoint is registered), so the trial goes on from it.

Tune copies its experiment state into the study's folder in place, from a background thread: a
driver killed during a copy leaves a file cut short, and Tune then restarts the whole study. So
the driver also keeps the last whole state beside it, to put back on --resume.
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
    """Copy the next checkpoint folder beside `path` to it if `path` is missing; whether it did."""
    path = path.rstrip("/")
    if files.get_file_info(path).type != fs.FileType.NotFound:
        return False
    folder, name = path.rsplit("/", 1)
    later = sorted(info.path for info in files.get_file_info(fs.FileSelector(folder))
                   if info.type == fs.FileType.Directory
                   and info.base_name.startswith(CHECKPOINT_PREFIX) and info.base_name > name)
    if not later:
        return False  # nothing to go on from: Tune fails the trial, naming its missing checkpoint
    try:
        files.create_dir(path)
        fs.copy_files(later[0], path, source_filesystem=files, destination_filesystem=files)
    except OSError:
        return False  # the same: one trial fails, not the study
    return True


class StateBackup(tune.Callback):
    """Tune callback: after each save of Tune's state, keep a whole copy of it in the study's
    folder (Tune has written it in its staging folder by then, and copies it on from there)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._saved: int | None = None  # the staged experiment state's mtime when last kept

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if not trials:
            return
        staging = Path(trials[0].storage.experiment_driver_staging_path)
        state = _newest(staging, TUNE_STATE_FILES[0])
        if state is None or state.stat().st_mtime_ns == self._saved:
            return
        self._saved = state.stat().st_mtime_ns
        partial = Path(self.folder) / f".{BACKUP}.partial"
        with zipfile.ZipFile(partial, "w") as bundle:
            for newest in filter(None, (_newest(staging, p) for p in TUNE_STATE_FILES)):
                bundle.write(newest, newest.name)
        partial.replace(Path(self.folder) / BACKUP)  # a driver killed while writing keeps the last


def restore_whole_state(folder: Path) -> bool:
    """Put the kept copy of Tune's state back in `folder` if a state file Tune would read there
    is cut short; whether it did. UserError naming the file when no whole copy is kept."""
    damaged = [path for path in (_newest(folder, p) for p in TUNE_STATE_FILES)
               if path is not None and not _whole(path)]
    if not damaged:
        return False
    try:
        with zipfile.ZipFile(folder / BACKUP) as bundle:
            names = bundle.namelist()
            if bundle.testzip() is not None or not names or not all(
                    any(fnmatch(name, p) for p in TUNE_STATE_FILES) for name in names):
                raise zipfile.BadZipFile("not a whole copy of Tune's state")
            bundle.extractall(folder)
    except (OSError, zipfile.BadZipFile) as err:
        raise UserError(f"{damaged[0]}: cut short (its driver was killed while Tune wrote it), and "
                        f"no whole copy to put back ({folder / BACKUP}: {err}); the study cannot "
                        "be resumed: start it again with another --name") from None
    for pattern in TUNE_STATE_FILES:  # a later session's files, which the copy predates
        for path in folder.glob(pattern):
            if path.name not in names:
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
