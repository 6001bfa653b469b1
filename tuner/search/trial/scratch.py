"""The trials' working files (their checkpoints before Tune takes them): a folder of the study's in
the temporary folder of each node they run on, removed from every node as the study ends."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from pathlib import Path

CLEANUP_TIMEOUT_S = 60  # a node whose cleanup has not run by then keeps its folder


def new_name() -> str:
    """A name for a study's folder that no other driver's study uses."""
    return f"tuner-trials-{secrets.token_hex(6)}"


def on_this_node(name: str) -> Path:
    """The folder `name` in this process's temporary folder (TMPDIR: each node's own)."""
    return Path(tempfile.gettempdir()) / name


def remove(name: str) -> None:
    """Remove the folder `name` from this node."""
    shutil.rmtree(on_this_node(name), ignore_errors=True)


def remove_everywhere(name: str, cluster: bool) -> None:
    """Remove the folder `name` from this machine (a local Ray's one node), or from each live node
    of a `cluster`, with a task pinned to each that needs no CPU."""
    if not cluster:
        remove(name)
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(remove)
    with contextlib.suppress(Exception):  # a cluster lost mid-study: its error is the one told
        pending = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node["NodeID"], soft=False)).remote(name) for node in ray.nodes() if node["Alive"]]
        ray.wait(pending, num_returns=len(pending), timeout=CLEANUP_TIMEOUT_S)
