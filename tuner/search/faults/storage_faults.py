"""A full, over-quota or read-only disk under a study is the machine's fault, not a trial's.

A trial that cannot write its checkpoint says so in a result (never a failed config, nor a
failed try), and the first such report stops the study as a Ctrl-C does, its runs ended and its
state saved where that still fits; `tuner search` then exits 1 with the `--resume` command, to
run once there is room again. The driver's own writes (Tune's state) failing end it the same way.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import tune

STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_IN_TEXT = re.compile(r"\[Errno (%s)\]" % "|".join(str(n) for n in STORAGE_ERRNOS), re.IGNORECASE)
STORAGE_FAULT = "storage_fault"  # in the result of a trial that could not write to its disk
_failed: dict[str, str] = {}  # the first storage failure of the study this process runs


class StorageFull(Exception):
    """The disk under the study's storage cannot be written (full, over quota, read-only)."""


def storage_error(err: BaseException | None) -> OSError | None:
    """The OSError of a storage fault in `err` or what caused it, if any."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            return err
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def as_storage_full(folder: Path) -> Iterator[None]:
    """Within (a study's run): an error a storage fault caused, or a trial's (`StorageGuard`), is
    raised as StorageFull naming the trial or file, or else the study's `folder`; Tune's own log
    of a state save that failed so is left out."""
    _failed.clear()
    snapshots = logging.getLogger("ray.tune.tune")
    snapshots.addFilter(_quiet_storage_faults)
    try:
        yield
    except Exception as err:
        cause = storage_error(err)
        if cause is None:
            raise
        if _failed:
            raise StorageFull(f"{folder}: {_failed['reason']}") from None
        raise StorageFull(f"{cause.filename or folder}: {cause.strerror or cause}") from None
    finally:
        snapshots.removeFilter(_quiet_storage_faults)
    if _failed:
        raise StorageFull(f"{folder}: {_failed['reason']}")


def _quiet_storage_faults(record: logging.LogRecord) -> bool:
    """Logging filter: drop a record of a storage fault (reported once, by `tuner search`)."""
    return not (record.exc_info and storage_error(record.exc_info[1]))


class StorageGuard(tune.Callback):
    """Tune callback: a trial that reported, or failed, for want of disk stops the study as
    Ctrl-C does, with no grace for the trials to checkpoint (they could not)."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if STORAGE_FAULT in result:
            self._stop(f"trial {trial.trial_id}: {result[STORAGE_FAULT]}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check(trial)

    def _check(self, trial: Any) -> None:
        from tuner.search.faults.outcome import tune_error

        line = next((part for part in tune_error(trial).split(" | ") if _IN_TEXT.search(part)),
                    None)
        if line is not None:
            self._stop(f"trial {trial.trial_id}: {line.strip()}")

    def _stop(self, reason: str) -> None:
        from tuner.search.faults.stopping import stop_at_once

        if not _failed:
            _failed["reason"] = reason
            stop_at_once()  # a clean stop, saved for --resume
