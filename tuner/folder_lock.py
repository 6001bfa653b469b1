"""An exclusive lock on a folder, held by one process at a time (for building files in it)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def folder_lock(folder: Path, on_wait: Callable[[], None]) -> Iterator[bool]:
    """Make `folder` (with its parents) and hold an exclusive lock on it (no lock file to leave
    behind), calling on_wait first when another process holds it; made again if that process
    removed it. Yields whether it holds the lock (not where the file system has none)."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
        try:
            locked = _flock(fd, on_wait)
            if locked and not _same_folder(fd, folder):
                on_wait = _quiet  # said once; the holder removed the folder it had made
                continue
            yield locked
            return
        finally:
            os.close(fd)  # releases the lock


def _flock(fd: int, on_wait: Callable[[], None]) -> bool:
    """Lock fd, waiting (after on_wait) while another process holds it; False where the file
    system has no such lock (NFS locks only files opened for writing): go on without one."""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        return False
    return True


def _same_folder(fd: int, folder: Path) -> bool:
    try:
        now = os.stat(folder)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _quiet() -> None:
    pass
