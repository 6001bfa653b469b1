"""MLflow's system metrics (CPU, memory, disk, network; GPU where one is) of the node a trial runs
on, logged to the trial's run by MLflow's own monitor from a thread of the trial's process: from
one interval after the trial starts, every interval, and once more as the trial ends.

The driver creates the run before Tune starts the trial, so the trial finds it by its tags. The
monitor ends with the trial, or on its own once the run is no longer RUNNING; a killed process
takes its thread with it. A store the trial cannot reach (a sqlite file on another machine, a
server it has no route to) leaves the run without them: nothing here may hold up training.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

FINISH_WAIT_S = 10.0  # the longest a trial's end waits for the monitor's last write


class NodeMetrics:
    """Logs MLflow's system metrics to trial `trial_id`'s run of `study` every `interval_s`."""

    def __init__(self, study: Any, trial_id: str, interval_s: float) -> None:
        self.study, self.trial_id, self.interval_s = study, trial_id, interval_s
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="tuner-node-metrics")

    def start(self) -> NodeMetrics:
        if self.interval_s > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        """End the monitor and wait (a bounded time) for its last write."""
        self._ended.set()
        if self._thread.is_alive():
            self._thread.join(FINISH_WAIT_S)

    def _watch(self) -> None:
        # Not before an interval: a shorter trial (most of those ASHA stops at its first rung)
        # is spared the CPU seconds of importing MLflow and opening the store
        if self._ended.wait(self.interval_s):
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        run_id = self._run_id()
        if run_id is None:
            return
        monitor = SystemMetricsMonitor(run_id, sampling_interval=self.interval_s,
                                       resume_logging=True,  # after a restart, on from its step
                                       tracking_uri=self.study.tracking.uri)
        monitor.start()
        self._ended.wait()
        monitor.finish()
        # and a sample as it ends (where the store went away, the samples before stand)
        with contextlib.suppress(Exception):
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()

    def _run_id(self) -> str | None:
        """The trial's run, or None where the store cannot be reached from here or has none."""
        from tuner.store.connect import connect_existing
        from tuner.store.layout import ROLE_TAG, STUDY_TAG, TRIAL_TAG

        try:
            client = connect_existing(self.study.tracking.uri)
            experiment = client.get_experiment_by_name(self.study.tracking.experiment)
            found = client.search_runs([experiment.experiment_id], max_results=1, filter_string=(
                f"tags.`{STUDY_TAG}` = '{self.study.name}' AND tags.`{ROLE_TAG}` = 'trial' "
                f"AND tags.`{TRIAL_TAG}` = '{self.trial_id}'"))
        except Exception:  # noqa: BLE001 - no metrics rather than a trial held up or failed
            return None
        return found[0].info.run_id if found else None
