"""Stop requests during a study (Ctrl-C; SIGTERM from `kill` or `docker stop`; SIGHUP from a
closed terminal; SIGUSR1, Slurm's notice before preemption). Ray never sees one while it starts
(an interrupted start leaves Ray's agents running); one that comes before the study is saved
aborts the command; after that, the running trials first get up to `search.stop_grace_s` to
checkpoint the step they are at (a flag tells them: a file in the study's folder, or where the
study is in an object store and the trials share no disk with the driver, a Ray actor), then Tune's own handler takes it and
saves the study for `--resume`, even when it came before Tune was listening. A second stop ends
the grace; one after that ends the driver at once. A copy of a stop is not a second one: `uv run`
passes on, 0.2 s later, a signal its whole process group got too (model.shell.new_stops tells
them apart by when each arrived)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray import tune

from model.shell import (
    STOP_SIGNALS,
    new_stops,
    stamp_arrivals,
    stop_requested,
    stops_as_ctrl_c,
    unstamp_arrivals,
)

STOP_FLAG = ".stop-requested"  # in the study's folder, while its trials checkpoint for a stop
STOP_CHECKPOINT = "stop_checkpoint_step"  # in the result that carries a trial's stop checkpoint
_held: dict[str, Any] = {}


def _hold(flag: Path | None, grace_s: float) -> None:
    _held.update(stop=False, tune_listens=False, taken_at=-float("inf"), at_once=False,
                 flag=flag, grace_s=grace_s if flag else 0.0, draining_since=None,
                 saved=set())


_hold(None, 0.0)


@contextmanager
def stops_held(flag: Path | None = None, grace_s: float = 0.0) -> Iterator[None]:
    """Within: a SIGINT is held, for `abort_if_stopped` or, once Tune listens, for `StopRelay`,
    which gives the running trials `grace_s` to checkpoint once it has made the file `flag`.
    KeyboardInterrupt at once if a stop came before, whose own was dropped where it was raised."""
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    _hold(flag, grace_s)
    _remove(flag)  # a driver killed while its trials checkpointed left it
    stamped = stamp_arrivals()  # (`tuner` stamps them from its start: then left as it is)
    signal.signal(signal.SIGINT, _on_interrupt)
    try:
        if stop_requested():  # checked once held: none can slip between
            raise KeyboardInterrupt
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        if stamped:
            unstamp_arrivals()
        _remove(flag)


def _remove(flag: Any) -> None:
    if flag is not None:
        flag.unlink(missing_ok=True)


@ray.remote(num_cpus=0)
class _Board:
    """Whether the study is stopping, for its trials on any node."""

    def __init__(self) -> None:
        self.up = False

    def set(self, up: bool) -> None:
        self.up = up

    def is_set(self) -> bool:
        return self.up


class RayFlag:
    """The stop flag as a named Ray actor, with a file's `touch`, `unlink` and `exists`: made by
    the driver once Ray runs (`unlink` as its study starts), asked by each trial over Ray's own
    channel. Before Ray starts, or once it is gone, no flag is up."""

    def __init__(self, name: str) -> None:
        self.name, self._handle = name, None

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "_handle": None}  # each process finds the actor itself

    def touch(self) -> None:
        self._set(True)

    def unlink(self, missing_ok: bool = True) -> None:
        self._set(False)

    def exists(self) -> bool:
        board = self._board(make=False)
        try:
            return board is not None and bool(ray.get(board.is_set.remote()))
        except ray.exceptions.RayError:  # the driver, and the actor with it, ended
            return False

    def _set(self, up: bool) -> None:
        board = self._board(make=True)
        if board is not None:
            ray.get(board.set.remote(up))

    def _board(self, make: bool) -> Any:
        if not ray.is_initialized():  # (Ray ended: its actor with it)
            self._handle = None
        elif self._handle is None:
            try:
                self._handle = _Board.options(name=self.name, get_if_exists=True).remote() \
                    if make else ray.get_actor(self.name)
            except ValueError:  # not made yet
                return None
        return self._handle


@contextmanager
def stop_handlers_kept() -> Iterator[None]:
    """Within (around ray.init): SIGTERM and SIGHUP keep their handlers, held as Ctrl-C is. Ray's
    start sets two for SIGTERM in Python that exit on the spot (one that came while Ray started
    left its agents running for a minute, and the command exited 15 without a word), and one in
    C++ that prints a stack dump: set again after."""
    stops_as_ctrl_c()
    set_handler = signal.signal

    def keep_ours(signum: int, handler: Any) -> Any:
        if signum in STOP_SIGNALS and signum != signal.SIGINT:
            return signal.getsignal(signum)
        return set_handler(signum, handler)

    signal.signal = keep_ours
    try:
        yield
    finally:
        signal.signal = set_handler
        stops_as_ctrl_c()


def stop_at_once() -> None:
    """Stop the study as Ctrl-C does, but with no grace for the trials to checkpoint."""
    _held["grace_s"] = 0.0
    signal.raise_signal(signal.SIGINT)


def abort_if_stopped() -> None:
    """KeyboardInterrupt when a stop came while Ray started (nothing is saved yet)."""
    if _held["stop"]:
        raise KeyboardInterrupt


def stopped_at_once() -> bool:
    """Whether the study ended on a second stop, before Tune ended its runs (the driver ends
    them then: `lifecycle.second_stop`)."""
    return bool(_held["at_once"])


def _on_interrupt(signum: int, frame: Any) -> None:
    # Tune hands SIGINT back to this handler once it has taken a stop: a second one is "now".
    fresh = new_stops()
    if _held["tune_listens"]:
        _at_once(fresh)
    else:
        _held["stop"] = True


def _at_once(fresh: int) -> None:
    """After Tune took a stop: a new one (not a copy of it) ends the driver at once."""
    if fresh:
        _held["at_once"] = True  # Ray's calls turn what is raised into a bare KeyboardInterrupt
        raise KeyboardInterrupt


def draining(trials: list) -> list:
    """The running trials a stop waits for, while it does."""
    return [] if _held["draining_since"] is None else _unsaved(trials)


def _unsaved(trials: list) -> list:
    """The running trials with an evaluation (a result to carry a checkpoint) whose stop
    checkpoint Tune has not saved."""
    return [trial for trial in trials if trial.status == "RUNNING"
            and "val_loss" in trial.last_result and "error" not in trial.last_result
            and trial.trial_id not in _held["saved"]]


class StopRelay(tune.Callback):
    """Tune callback: hands a stop to Tune's handler (a held one as the study's loop starts)
    once the running trials have checkpointed the step they are at, or `stop_grace_s` passed."""

    def setup(self, **info: Any) -> None:
        _remove(_held["flag"])  # (a RayFlag makes its actor now, not in a signal's handler)
        _held["tune_listens"] = True
        tune_handler = signal.getsignal(signal.SIGINT)

        def take() -> None:
            _held.update(taken_at=time.monotonic(), draining_since=None)
            tune_handler(signal.SIGINT, None)

        def on_stop(signum: int, frame: Any) -> None:
            stop(new_stops())

        def stop(fresh: int) -> None:
            if _held["taken_at"] > -float("inf"):  # SIGUSR1 after Tune took a stop
                _at_once(fresh)
                return
            if not fresh:  # a copy of the stop being taken
                return
            if _held["draining_since"] is not None:
                take()  # a second stop ends the grace
                return
            if _held["grace_s"] <= 0 or not _unsaved(_held["trials"]):
                take()
                return
            try:
                _held["flag"].touch()
            except OSError:  # a full or read-only disk: no trial can checkpoint anyway
                take()
                return
            _held.update(draining_since=time.monotonic(), saved=set())

        _held.update(take=take, trials=[])
        for signum in (signal.SIGINT, signal.SIGUSR1):  # Tune's handler takes both
            signal.signal(signum, on_stop)
        if _held["stop"]:
            stop(1)  # (a signal raised now could pass for a copy of it)

    def on_trial_save(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune saves a result's checkpoint after taking the result as the trial's last
        if _held["draining_since"] is not None and STOP_CHECKPOINT in trial.last_result:
            _held["saved"].add(trial.trial_id)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        _held["trials"] = trials  # Tune's own list, which it adds new trials to

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        began = _held["draining_since"]
        if began is not None and (not draining(trials)
                                  or time.monotonic() - began >= _held["grace_s"]):
            _held["take"]()
        if _held["taken_at"] > -float("inf"):
            # Tune's loop ends with this step, before a trial can see the flag gone and end its
            # process (which Tune would take for the trial's end had it still been listening)
            _remove(_held["flag"])
