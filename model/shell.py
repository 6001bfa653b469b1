"""How a command meets its shell, for `python -m model.train` and `tuner` alike.

SIGTERM (`kill`, `docker stop`, a batch scheduler's time limit), SIGUSR1 (Slurm's `--signal`
notice before a preemption) and SIGHUP (a closed terminal or SSH session) stop a command as
Ctrl-C does, so its clean-up runs and it exits 130: no run is left
marked running and no half-written folder is left behind. Copies of one stop count once: `uv run`
passes on, 0.2 s later, a SIGINT that its whole process group got too. The commands it prints
for pasting start as it was started.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import socket
import struct
import sys
import time
from typing import Any, NoReturn


def as_started(command: str) -> str:
    """`command` (a `tuner …` or `python …` line) as the user can paste it: under `uv run` when
    uv started this process, since `tuner` is then on no PATH outside uv's environment."""
    return f"uv run {command}" if "UV_RUN_RECURSION_DEPTH" in os.environ else command


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
ECHO_S = 0.5  # a stop that came this soon after the one counted is a copy of it, not a second
_SO_TIMESTAMP = 29 if sys.platform == "linux" else None  # SOL_SOCKET's option (Python lacks it)
_stops: list[int] = []  # each stop that came, for `stop_requested`
_arrivals: dict[str, Any] = {"sockets": None, "counted": -math.inf}


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
    _arrivals["counted"] = -math.inf


def aborted() -> NoReturn:
    """Say "aborted" and exit 130, deaf to any later stop: a copy of the stop that aborted may
    still come, and would print a traceback in place of the word."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    print("aborted", file=sys.stderr, flush=True)
    sys.exit(130)


def stamp_arrivals() -> bool:
    """From now on, the kernel stamps when each signal arrives, for `new_stops`: Python's wakeup
    byte for it goes to a socket that stamps what it receives. A handler runs only once the main
    thread is back in Python, a second later inside Ray's calls, so its own time could not tell a
    copy 0.2 s after a stop from a second stop. Whether it was set here (not where another wakeup
    fd, an event loop's, is set, off Linux, or off the main thread)."""
    if _SO_TIMESTAMP is None or _arrivals["sockets"] is not None:
        return False
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMP, 1)
    reader.setblocking(False)
    writer.setblocking(False)
    try:
        other = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        other = None
    if other != -1:
        if other is not None:
            signal.set_wakeup_fd(other)
        reader.close()
        writer.close()
        return False
    _arrivals.update(sockets=(reader, writer), counted=-math.inf)
    return True


def unstamp_arrivals() -> None:
    """Undo `stamp_arrivals`."""
    sockets = _arrivals["sockets"]
    if sockets is not None:
        current = signal.set_wakeup_fd(-1)
        if current != sockets[1].fileno():  # another took over since: left in place
            signal.set_wakeup_fd(current)
        for end in sockets:
            end.close()
    _arrivals.update(sockets=None, counted=-math.inf)


def new_stops() -> int:
    """For a stop's handler: how many stops came since the last one counted, a stop within ECHO_S
    of the one counted before it being a copy of that one (0: only copies came). By when each
    arrived where the kernel stamped it, else by now."""
    arrived = _stamped()
    fresh = 0
    for when in [time.time()] if arrived is None else arrived:
        if when - _arrivals["counted"] > ECHO_S:
            fresh += 1
            _arrivals["counted"] = when
    return fresh


def _stamped() -> list[float] | None:
    """When each stop signal not read yet arrived, by the kernel's stamps; None where there are
    none: not stamped, another wakeup fd took over (left in place), or the byte is not there
    (read by an earlier call of two signals handled in one, or not written yet)."""
    sockets = _arrivals["sockets"]
    if sockets is None:
        return None
    reader, writer = sockets
    other = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    if other != writer.fileno():
        signal.set_wakeup_fd(other)
        return None
    arrived = []
    while True:
        try:
            byte, ancillary, _, _ = reader.recvmsg(1, socket.CMSG_SPACE(16))
        except BlockingIOError:
            return arrived or None
        if byte and byte[0] in STOP_SIGNALS:
            arrived.append(next((_seconds(data) for _, kind, data in ancillary
                                 if kind == _SO_TIMESTAMP), time.time()))


def _seconds(timeval: bytes) -> float:
    seconds, microseconds = struct.unpack("ll", timeval[:struct.calcsize("ll")])
    return seconds + microseconds / 1e6


def _interrupt(signum: int, _frame: Any) -> None:
    _stops.append(signum)
    if new_stops():
        raise KeyboardInterrupt


def _as_ctrl_c(signum: int, _frame: Any) -> None:
    _stops.append(signum)
    if signum == signal.SIGHUP:
        _quiet_a_closed_terminal()
    # A command a script started in the background ignores SIGINT (the shell's rule), and then
    # raising it would do nothing: the stop must come all the same.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        if new_stops():
            raise KeyboardInterrupt
        return
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
