"""A lost Ray node is a stop of the study, said in words: the local Ray's raylet or GCS died (the
kernel's out-of-memory killer may pick either), Ray marked the driver's own node dead, or a
cluster's head stopped answering. The first sign stops the study as a Ctrl-C does, with no grace
for checkpoints (the trials' workers died with their node); `tuner search` then names what
happened and prints the `--resume` command. Left alone, Ray ended the driver some seconds later
with exit 1 and no word, its runs left RUNNING. Where the GCS is gone, Tune cannot stop (its calls
wait on the GCS, until Ray's client gives up at 60 s and ends the process): after GIVE_UP_S the
study is ended from here.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

POLL_S = 1.0  # how often the driver looks at its Ray
HEAD_SILENCE_S = 30.0  # a cluster's head unanswered this long is lost (Ray's driver gives up at 60)
GIVE_UP_S = 15.0  # a study not stopped this long after its node was lost is ended by `stuck`
# What Ray prints of a lost node (the raylet's last 20 log lines among it): said here in words
RAYS_OWN = ("Raylet is terminated", "has been marked dead because the detector")
_NAMES = {"raylet": "raylet (the node's scheduler)", "gcs_server": "GCS (its head's server)"}
_lost: dict[str, str] = {}  # what was lost, in the study this process runs


class NodeLost(Exception):
    """The Ray node under the study died, or the cluster's head stopped answering."""


@contextmanager
def stop_on_node_loss(address: str | None, stuck: Callable[[str], None]) -> Iterator[None]:
    """Within (a study's run on Ray): a lost node stops the study at once; after, NodeLost says
    what was lost (raised in place of whatever the stop left Tune to raise). A study that has
    not stopped GIVE_UP_S later is handed to `stuck` with what was lost, from another thread:
    it ends the study's runs and the process."""
    import ray._private.worker as ray_worker

    _lost.clear()
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(address, done, stuck), daemon=True,
                               name="tuner-node-watch")
    printing = ray_worker.print_to_stdstream

    def print_but_node_loss(data: dict[str, Any], **kwargs: Any) -> None:
        lines = [line for line in data["lines"] if not any(text in line for text in RAYS_OWN)]
        if lines:
            printing({**data, "lines": lines}, **kwargs)

    ray_worker.print_to_stdstream = print_but_node_loss  # (Ray's error messages to the driver)
    watcher.start()
    try:
        yield
    except Exception:
        if not _lost:
            raise
    finally:
        done.set()
        watcher.join()
        ray_worker.print_to_stdstream = printing
    if _lost:
        raise NodeLost(_lost["what"])


def _watch(address: str | None, done: threading.Event, stuck: Callable[[str], None]) -> None:
    """Until `done`: each POLL_S, whether the node is lost; the first loss stops the study."""
    from tuner.search.faults.stopping import stop_at_once

    silent_since: float | None = None
    while not done.wait(POLL_S):
        what, silent_since = _loss(address, silent_since)
        if what:
            _lost["what"] = what
            stop_at_once()
            if not done.wait(GIVE_UP_S):
                stuck(what)
            return


def _loss(address: str | None, silent_since: float | None) -> tuple[str, float | None]:
    """What was lost ("" when nothing), and since when the GCS has not answered (None: it does)."""
    import ray._private.worker as ray_worker

    node = ray_worker._global_node
    if node is None:  # Ray shut down: the study is ending
        return "", None
    dead = [(kind, process) for kind, process in node.dead_processes() if kind in _NAMES]
    if dead:
        kind, process = dead[0]
        return f"the local Ray's {_NAMES[kind]} died ({_exit_status(process.returncode)})", None
    try:
        alive = ray_worker.global_worker.gcs_client.check_alive(
            [_node_id(node)], timeout=POLL_S * 5)
    except Exception:  # noqa: BLE001 - unreachable: Ray's client raises its own kinds
        now = time.monotonic()
        silent_since = now if silent_since is None else silent_since
        if address and now - silent_since >= HEAD_SILENCE_S:
            return (f"the Ray cluster's head at {address} has not answered for "
                    f"{now - silent_since:.0f} s"), silent_since
        return "", silent_since
    if alive and not alive[0]:
        return "Ray marked this machine's node dead (it missed its health checks)", None
    return "", None


def _node_id(node: Any) -> Any:
    from ray._raylet import NodeID

    return NodeID.from_hex(node.node_id)


def _exit_status(code: int | None) -> str:
    """How a process ended, in words."""
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (", as the out-of-memory killer does" if code == -9 else "")
    return f"exit code {code}"
