"""One driver at a time for a study in an object store, where no disk is shared to lock a file
on: a lease object in the study's folder, renewed while the driver runs and deleted as it ends.
A lease not renewed for STALE_S (its driver killed), or held by a process of this machine that
has ended, is free. Object stores through pyarrow offer no conditional write, so two drivers
started within the same second could both take it: the lease keeps a second driver out of a
running study, which is what `tuner search` needs, not a race of two starts."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tuner.errors import UserError
from tuner.store.object_store import Storage

LEASE = "driver.lease"
RENEW_S = 10.0
STALE_S = 60.0  # three renewals missed, with room for a clock a little off the store's


def check_free(storage: Storage, name: str) -> None:
    """UserError while another driver holds study `name`'s lease (checked before Ray starts)."""
    if not storage.remote:
        return
    holder = _holder(storage, name)
    if holder is not None:
        raise UserError(f"study {name!r} is running: another `tuner search` ({holder}) drives it "
                        f"from {storage.shown()}; stop that one first, or let it finish (a "
                        f"driver that was killed frees it {STALE_S:.0f} s after)")


@contextmanager
def held(storage: Storage, name: str) -> Iterator[None]:
    """Hold study `name`'s lease while within (UserError when another driver holds it)."""
    if not storage.remote:
        yield
        return
    check_free(storage, name)
    path, stop = f"{storage.study_path(name)}/{LEASE}", threading.Event()
    mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()

    def renew() -> None:
        while True:
            try:
                with storage.filesystem.open_output_stream(path) as out:
                    out.write(mine)
            except OSError:
                pass  # the store's failure shows in Tune's own writes, which stop the study
            if stop.wait(RENEW_S):
                return

    renewing = threading.Thread(target=renew, name="tuner-lease", daemon=True)
    renewing.start()
    try:
        yield
    finally:
        stop.set()
        renewing.join()
        try:
            storage.filesystem.delete_file(path)
        except OSError:
            pass  # stale in STALE_S


def _holder(storage: Storage, name: str) -> str | None:
    """Who holds the lease ("pid N on HOST"), if it is held."""
    from pyarrow.fs import FileType

    path = f"{storage.study_path(name)}/{LEASE}"
    info = storage.filesystem.get_file_info(path)
    if info.type != FileType.File or time.time() - info.mtime_ns / 1e9 > STALE_S:
        return None
    try:
        with storage.filesystem.open_input_stream(path) as lease:
            held_by: dict[str, Any] = json.loads(lease.read())
    except (OSError, ValueError):
        return None  # deleted since, or written by no driver
    if held_by.get("host") == socket.gethostname() and not _running(held_by.get("pid")):
        return None
    return f"pid {held_by.get('pid')} on {held_by.get('host')}"


def _running(pid: Any) -> bool:
    """Whether a process `pid` of this machine is running."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True  # another user's
    return True
