"""The local Ray a study starts on this machine: its servers in sessions of their own, a second
try when the first start fails, and what a failed start left ended.

Ray gives its raylet a fixed 30 s to register (and its GCS 30 s to bind its port, unless
RAY_gcs_server_port_wait_time_s says otherwise): a machine whose cores are all busy can take
longer, and ray.init then raised a page of traceback, leaving the servers it had started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from tuner.errors import reason

TRIES = 2


class RayNotStarted(Exception):
    """The local Ray did not start, twice: the study did not start, and no Ray process is left."""


def start_local_ray(**kwargs: Any) -> None:
    """ray.init a new local Ray (never a running cluster) with `kwargs`; a failed start ends the
    processes it started and is tried once more; RayNotStarted after the second."""
    import ray

    began = time.monotonic()
    for _ in range(TRIES):
        with _sessions_of_their_own() as started:
            try:
                ray.init(address="local", **kwargs)
                return
            except Exception as err:  # noqa: BLE001 - Ray raises Exception itself on a timeout
                with contextlib.suppress(Exception):  # a start that failed once its node was up
                    ray.shutdown()
                _end(started)
                failure = err
    raise RayNotStarted(_in_words(time.monotonic() - began, failure))


def _in_words(seconds: float, err: Exception) -> str:
    """Why the local Ray did not start, with the machine's load."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    what = f"the local Ray did not start in {seconds:.0f} s"
    ray_said = f"(Ray: {reason(err)})"
    if load >= cores:
        return (f"{what}: the machine is busy, load {load:.1f} on {cores} cores {ray_said}; "
                "run the command again once it is less busy")
    return f"{what} {ray_said}; load {load:.1f} on {cores} cores"


def _end(started: list[subprocess.Popen]) -> None:
    """Kill each process a failed start left, with the processes of its session."""
    for process in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # its session's group: its pid
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


@contextlib.contextmanager
def _sessions_of_their_own() -> Iterator[list[subprocess.Popen]]:
    """Within: each process Ray starts (its servers, and through the raylet the trials' workers)
    starts a session of its own; the list of those started. A signal to the driver's whole
    process group (Slurm's scancel, plain `timeout`, systemd's stop, a closed terminal) then
    reaches the driver alone, which stops the study; it stopped Ray's servers too, and the
    driver waited a minute for them and failed. Ray's fate-sharing still ends them if the driver
    dies."""
    from ray._private import services

    popen, started = services.ConsolePopen, []

    class OwnSession(popen):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "start_new_session": True})
            started.append(self)

    services.ConsolePopen = OwnSession
    try:
        yield started
    finally:
        services.ConsolePopen = popen
