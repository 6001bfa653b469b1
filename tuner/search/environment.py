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
    # How often the driver, waiting on Ray, runs Python's signal handlers (Ray: each second). A
    # stop is then handled within 0.1 s of its arrival, and a copy of it (`uv run` passes one on
    # 0.2 s later) is told apart from a second stop by when each came (tuner.search.faults.stopping).
    "RAY_get_check_signal_interval_milliseconds": "100",
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
    # Ray's GCS marks a node dead once it misses 5 health checks in a row (3 s apart, 10 s each),
    # and a machine whose cores are all busy can leave its raylet that slow: the study, whose only
    # node it is, died with it. Here it takes 20 in a row (200 s at least); a raylet that did die
    # is seen at once by the driver (tuner.search.faults.node_watch).
    "RAY_health_check_period_ms": "10000",
    "RAY_health_check_timeout_ms": "30000",
    "RAY_health_check_failure_threshold": "20",
    # How long Ray waits for its GCS to bind its port (Ray: 30 s), which a busy machine can
    # outlast; its raylet's 30 s is fixed: a start that fails is tried once more
    # (tuner.search.run.local_ray).
    "RAY_gcs_server_port_wait_time_s": "60",
}


def configure(local: bool) -> None:
    """Apply STUDY_ENV, and LOCAL_RAY_ENV for a `local` Ray, where the user has not set a value."""
    for key, value in {**STUDY_ENV, **(LOCAL_RAY_ENV if local else {})}.items():
        os.environ.setdefault(key, value)


@contextmanager
def kept() -> Iterator[None]:
    """Within: what a study sets (`configure`'s, and Ray's own: RAY_AUTH_MODE, RAY_CLIENT_MODE,
    …); after, os.environ exactly as before, so that a process that goes on (a notebook's)
    starts its next Ray, a cluster's driver say, as if no study had run."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in [key for key in os.environ if key not in before]:
            del os.environ[key]
        os.environ.update(before)
