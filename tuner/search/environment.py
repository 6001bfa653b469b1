"""Settings Ray, Tune and MLflow read from the environment, set before Ray is imported (user
values win)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

STUDY_ENV = {
    # Workers run this interpreter; Ray's `uv run` hook would instead re-resolve the environment
    # for every worker and upload the working directory (datasets, mlruns) to the cluster.
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Tune's experiment state every few seconds, so a killed driver loses little.
    "TUNE_GLOBAL_CHECKPOINT_S": "3",
    # No per-trial CSV/JSON/TensorBoard loggers (MLflow records everything) and no console output
    # of Tune's own (the live view is ours).
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_THRESHOLD_S": "60",
    # A failed try is one line of the live view, and whole in MLflow's `tuner.error` and the
    # trial's error.txt; Tune printed a page for each (Ray's memory report, for a memory kill).
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
    # Nor Ray's for the failed tries of trials a stop ended before Tune read their errors.
    "RAY_IGNORE_UNHANDLED_ERRORS": "1",
    # How long a reused actor waits for its last trial's thread to end (Tune: 2 s). A busy machine
    # can take longer to unwind a stopped trial; Tune then failed the next trial unrecorded and
    # kept its concurrency slot, so the study hung or stopped as interrupted.
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": "60",
}


# For the Ray a study starts on this machine.
LOCAL_RAY_ENV = {
    # Its servers (GCS, raylet, workers, agents) listen on 127.0.0.1 only. Ray takes this flag,
    # meant for clusters on Windows and macOS, as "no cluster" and then uses the loopback address
    # as the node's; otherwise it advertises and binds the machine's network address.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # No idle workers started for the driver: Tune's trial actors carry a runtime env, so they
    # never use them, and on a small machine they compete with the trials' first seconds.
    "RAY_prestart_worker_first_driver": "0",
}


def configure(local: bool) -> None:
    """Apply STUDY_ENV, and LOCAL_RAY_ENV for a `local` Ray, where the user has not set a value."""
    for key, value in {**STUDY_ENV, **(LOCAL_RAY_ENV if local else {})}.items():
        os.environ.setdefault(key, value)


@contextmanager
def undone_after() -> Iterator[None]:
    """Within: what `configure` sets; after, those variables as they were, so that a process that
    goes on (a notebook's) starts its next Ray, a cluster's driver say, without a local Ray's."""
    before = {key: os.environ.get(key) for key in {**STUDY_ENV, **LOCAL_RAY_ENV}}
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
