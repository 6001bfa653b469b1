"""Resuming a study whose driver died inside Tune's checkpoint race.

Registering a trial's checkpoint deletes the one before it (`num_to_keep`), and Tune saves its
experiment state just after: a driver killed in between resumes naming the deleted checkpoint,
and Tune would fail the trial. The next checkpoint survives, and MLflow already holds its metrics
(results reach callbacks before their checkpoint is registered), so the trial goes on from it.
"""

from __future__ import annotations

from typing import Any

from pyarrow import fs
from ray import tune

CHECKPOINT_PREFIX = "checkpoint_"  # Tune's checkpoint folders: checkpoint_000000, ...


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
