"""The driver's working copy of a study kept in an object store (`--storage s3://...`).

Tune writes its state and the trials' checkpoints to the store itself. The driver's own files in
the study's folder (the study's state, the whole copy of Tune's state, ASHA's rungs, the
mid-trial checkpoints), and the checks that read or repair Tune's, work on a local folder:
pulled from the store before the study is opened, and pushed back once the study is saved and
the checks are done (before Tune starts), and again at the study's end. The store is the study:
a driver whose local folders are gone pulls it whole again. Files named with a leading dot
(partial writes, the stop flag) and the driver's lock stay local."""

from __future__ import annotations

import os
from pathlib import Path

from tuner.errors import UserError
from tuner.search.state.state import LOCK_FILE
from tuner.store.object_store import Storage

# each study folder's files as last pulled or pushed: relative path -> (size, mtime_ns)
_synced: dict[Path, dict[str, tuple[int, int]]] = {}


def pull(storage: Storage, name: str, whole: bool) -> None:
    """Make the working copy of study `name` match the store: every file (`whole`), or those at
    the top of its folder only (its state, not the trials' checkpoints). Files the store lacks
    are deleted; those of another size or time are fetched."""
    if not storage.remote:
        return
    from pyarrow.fs import FileSelector, FileType, LocalFileSystem, copy_files

    folder, remote = storage.local / name, storage.study_path(name)
    infos = storage.filesystem.get_file_info(FileSelector(remote, recursive=whole,
                                                          allow_not_found=True))
    there = {info.path[len(remote) + 1:]: info for info in infos if info.type == FileType.File}
    here = _files(folder, whole)
    for rel in here.keys() - there.keys():
        (folder / rel).unlink()
    synced = _synced.setdefault(folder, {}) if not whole else {}
    for rel, info in there.items():
        stamp = (info.size, info.mtime_ns or 0)
        if here.get(rel) != stamp:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            copy_files(info.path, str(folder / rel), source_filesystem=storage.filesystem,
                       destination_filesystem=LocalFileSystem())
            os.utime(folder / rel, ns=(stamp[1], stamp[1]))
        synced[rel] = stamp
    for rel in here.keys() - there.keys():
        synced.pop(rel, None)
    _synced[folder] = synced


def push(storage: Storage, name: str) -> None:
    """Write to the store what changed in the working copy of study `name` since it was pulled
    or pushed, and delete there what was deleted here."""
    if not storage.remote:
        return
    from pyarrow.fs import LocalFileSystem, copy_files

    folder, remote = storage.local / name, storage.study_path(name)
    synced, now = _synced.get(folder, {}), _files(folder, whole=True)
    for rel, stamp in now.items():
        if synced.get(rel) != stamp:
            copy_files(str(folder / rel), f"{remote}/{rel}", source_filesystem=LocalFileSystem(),
                       destination_filesystem=storage.filesystem)
    for rel in synced.keys() - now.keys():
        storage.filesystem.delete_file(f"{remote}/{rel}")
    _synced[folder] = now


def check_found(storage: Storage, name: str) -> None:
    """UserError when the store holds nothing of study `name` (once pulled), naming the studies
    it holds."""
    if not storage.remote or any((storage.local / name).glob("*")):
        return
    from pyarrow.fs import FileSelector, FileType

    there = sorted(info.base_name for info in storage.filesystem.get_file_info(
        FileSelector(storage.root, allow_not_found=True)) if info.type == FileType.Directory)
    raise UserError(f"no study {name!r} to resume in {storage.shown()} (studies there: "
                    f"{', '.join(there) or 'none'}); pass the --storage it ran with")


def _files(folder: Path, whole: bool) -> dict[str, tuple[int, int]]:
    """The files of `folder` that the store keeps (all, or those at its top): relative path ->
    (size, mtime_ns)."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.rglob("*") if whole else folder.iterdir():
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts) \
                and rel.name != LOCK_FILE:
            stat = path.stat()
            found[rel.as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return found
