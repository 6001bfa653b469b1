"""Tune's state files in a study's folder, and the whole copy the driver keeps beside them.

Tune copies its state files into the study's folder in place, from background threads: a driver
killed during a copy leaves a file cut short (Tune then restarts the whole study), or whole files
from two saves (the searcher then fails on a trial it never suggested). The driver zips each save
before Tune copies it, so `--resume` can put the last whole one back.
"""

from __future__ import annotations

import json
import pickletools
import zipfile
from fnmatch import fnmatch
from pathlib import Path

from tuner.errors import UserError

SCHEDULER_STATE = "scheduler-state.pkl"  # ASHA's or the median rule's, saved beside Tune's
# Tune's state files, one of each per driver session (the newest is read); only the first is JSON
TUNE_STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl",
                    "callback-states-*.pkl", "basic-variant-state-*.json", SCHEDULER_STATE)
BACKUP = "tune_state.zip"


def keep(staging: Path, folder: Path) -> None:
    """Zip Tune's newest state files in `staging` into `folder`, replacing the last copy whole."""
    files = [path for path in (_newest(staging, p) for p in TUNE_STATE_FILES) if path]
    if not files or not fnmatch(files[0].name, TUNE_STATE_FILES[0]):
        return
    partial = folder / f".{BACKUP}.partial"
    with zipfile.ZipFile(partial, "w") as bundle:
        for path in files:
            bundle.write(path, path.name)
    partial.replace(folder / BACKUP)  # a driver killed while writing keeps the last one


def restore_whole_state(folder: Path) -> bool:
    """Put the copy kept whole back in `folder` if the state Tune would read there differs from
    it; whether it did. UserError naming a file cut short when no whole copy is kept."""
    kept = to_put_back(folder)
    if kept is None:
        return False
    for name, data in kept.items():
        partial = folder / f".{name}.partial"
        partial.write_bytes(data)
        partial.replace(folder / name)
    for pattern in TUNE_STATE_FILES:  # newer than the copy: Tune would read them instead
        names = [name for name in kept if fnmatch(name, pattern)]
        for path in folder.glob(pattern):
            if names and path.name > names[0]:
                path.unlink()
    return True


def to_put_back(folder: Path) -> dict[str, bytes] | None:
    """The copy of Tune's state kept whole (file name → bytes) if the state Tune would read in
    `folder` differs from it (cut short, or files from two saves: the copy is never older), else
    None. UserError naming a file cut short when no whole copy is kept. Writes nothing."""
    newest = [path for path in (_newest(folder, p) for p in TUNE_STATE_FILES) if path is not None]
    try:
        with zipfile.ZipFile(folder / BACKUP) as bundle:
            kept = {name: bundle.read(name) for name in bundle.namelist()}
        if not kept or not all(any(fnmatch(name, p) for p in TUNE_STATE_FILES) for name in kept):
            raise zipfile.BadZipFile("not a copy of Tune's state")
    except (OSError, zipfile.BadZipFile) as err:  # a damaged entry fails its CRC on read
        damaged = [path for path in newest if not whole(path)]
        if damaged:
            raise UserError(f"{damaged[0]}: cut short (its driver was killed while Tune wrote "
                            f"it), and no whole copy to put back ({folder / BACKUP}: {err}); the "
                            "study cannot be resumed: start it again with another --name") from None
        return None
    return None if {path.name: path.read_bytes() for path in newest} == kept else kept


def experiment_state(folder: Path) -> dict:
    """Tune's experiment state as `--resume` will read it in `folder`: the copy kept whole where
    the folder's files differ from it ({} when there is none). UserError as `to_put_back`."""
    kept = to_put_back(folder) or {}
    data = next((data for name, data in kept.items() if fnmatch(name, TUNE_STATE_FILES[0])), None)
    newest = _newest(folder, TUNE_STATE_FILES[0])
    if data is None and newest is not None:
        data = newest.read_bytes()
    return json.loads(data) if data else {}


def _newest(folder: Path, pattern: str) -> Path | None:
    """The file Tune reads of those matching `pattern` (the latest session's), if any."""
    return max(folder.glob(pattern), default=None)


def whole(path: Path) -> bool:
    """Whether Tune's state file `path` is whole: JSON that parses, or a pickle that reaches its
    end (walked, not loaded). Unreadable: not whole."""
    try:
        data = path.read_bytes()
        if fnmatch(path.name, TUNE_STATE_FILES[0]):
            json.loads(data)
        else:
            for _ in pickletools.genops(data):
                pass
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    return True
