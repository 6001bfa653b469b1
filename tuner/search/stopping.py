"""Stop requests during a study (Ctrl-C; SIGTERM from `kill` or `docker stop`; SIGHUP from a
closed terminal). Ray never sees one while it starts (an interrupted start leaves Ray's agents
running); one that comes before the study is saved aborts the command; after that, Tune's own
handler takes it and saves the study for `--resume`, even when it came before Tune was
listening. A second stop ends the driver at once, unless it is the first one delivered again
(`uv run` passes on a signal that a supervisor also sent to its whole process group)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray import tune

from model.shell import stops_as_ctrl_c

_held = {"stop": False, "tune_listens": False, "taken_at": -float("inf"), "at_once": False}
ECHO_S = 0.5  # a stop this soon after the one Tune took is that one again, not a second


@contextmanager
def stops_held() -> Iterator[None]:
    """Within: a SIGINT is held, for `abort_if_stopped` or, once Tune listens, for `StopRelay`."""
    before = {signum: signal.getsignal(signum)
              for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    _held.update(stop=False, tune_listens=False, taken_at=-float("inf"), at_once=False)
    signal.signal(signal.SIGINT, _on_interrupt)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@contextmanager
def stop_handlers_kept() -> Iterator[None]:
    """Within (around ray.init): SIGTERM and SIGHUP keep their handlers, held as Ctrl-C is. Ray's
    start sets two for SIGTERM in Python that exit on the spot (one that came while Ray started
    left its agents running for a minute, and the command exited 15 without a word), and one in
    C++ that prints a stack dump: set again after."""
    stops_as_ctrl_c()
    set_handler = signal.signal

    def keep_ours(signum: int, handler: Any) -> Any:
        if signum in (signal.SIGTERM, signal.SIGHUP):
            return signal.getsignal(signum)
        return set_handler(signum, handler)

    signal.signal = keep_ours
    try:
        yield
    finally:
        signal.signal = set_handler
        stops_as_ctrl_c()


def abort_if_stopped() -> None:
    """KeyboardInterrupt when a stop came while Ray started (nothing is saved yet)."""
    if _held["stop"]:
        raise KeyboardInterrupt


def stopped_at_once() -> bool:
    """Whether the study ended on a second stop, its runs left RUNNING for `--resume`."""
    return bool(_held["at_once"])


def _on_interrupt(signum: int, frame: Any) -> None:
    # Tune hands SIGINT back to this handler once it has taken a stop: a second one is "now".
    if _held["tune_listens"]:
        if time.monotonic() - _held["taken_at"] > ECHO_S:
            _held["at_once"] = True  # Ray's calls turn what is raised into a bare KeyboardInterrupt
            raise KeyboardInterrupt
        return
    _held["stop"] = True


class StopRelay(tune.Callback):
    """Tune callback: hands a held stop on as the study's loop starts, Tune's handler in place."""

    def setup(self, **info: Any) -> None:
        _held["tune_listens"] = True
        tune_handler = signal.getsignal(signal.SIGINT)

        def note_taken(signum: int, frame: Any) -> None:
            _held["taken_at"] = time.monotonic()
            tune_handler(signum, frame)

        signal.signal(signal.SIGINT, note_taken)
        if _held["stop"]:
            signal.raise_signal(signal.SIGINT)
