"""How a command meets its shell, for `python -m model.train` and `tuner` alike.

SIGTERM (`kill`, `docker stop`, a batch scheduler's time limit), SIGUSR1 (Slurm's `--signal`
notice before a preemption) and SIGHUP (a closed terminal or SSH session) stop a command as
Ctrl-C does, so its clean-up runs and it exits 130: no run is left
marked running and no half-written folder is left behind. The commands it prints for pasting
start as it was started.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any


def as_started(command: str) -> str:
    """`command` (a `tuner …` or `python …` line) as the user can paste it: under `uv run` when
    uv started this process, since `tuner` is then on no PATH outside uv's environment."""
    return f"uv run {command}" if "UV_RUN_RECURSION_DEPTH" in os.environ else command


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
_stops: list[int] = []  # each stop that came, for `stop_requested`


def stops_as_ctrl_c() -> None:
    """From now on SIGTERM, SIGUSR1, and SIGHUP unless it is ignored (`nohup`), raise SIGINT in
    this process (KeyboardInterrupt, or a study's hold); each stop is recorded."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _as_ctrl_c)
    signal.signal(signal.SIGUSR1, _as_ctrl_c)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _as_ctrl_c)


def stop_requested() -> bool:
    """Whether a stop came once `stops_as_ctrl_c` set its handlers, even one whose KeyboardInterrupt
    Python dropped: raised while a finalizer or weakref callback ran, it is only printed."""
    return bool(_stops)


def forget_stops() -> None:
    """Forget the stops that came: the study they stopped has ended, and the next one in this
    process (a notebook's) starts afresh."""
    _stops.clear()


def _interrupt(signum: int, _frame: Any) -> None:
    _stops.append(signum)
    raise KeyboardInterrupt


def _as_ctrl_c(signum: int, _frame: Any) -> None:
    _stops.append(signum)
    if signum == signal.SIGHUP:
        _quiet_a_closed_terminal()
    # A command a script started in the background ignores SIGINT (the shell's rule), and then
    # raising it would do nothing: the stop must come all the same.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def _quiet_a_closed_terminal() -> None:
    """Send output for a terminal that hung up to /dev/null: writing there fails (EIO), and the
    clean stop would fail with it, halfway."""
    for fd in (1, 2):
        try:
            os.write(fd, b"")  # a hung-up terminal fails even this (and no longer says it is one)
        except OSError as err:
            if err.errno != errno.EIO:
                continue
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
