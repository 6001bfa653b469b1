"""A trial's worker killed under it (Ray's memory monitor, a lost node) is a trial failure.

Ray 2.60 fails a running actor task whose worker its memory monitor killed with
`OutOfMemoryError`, which is neither the `RayActorError` of a dead actor nor the `RayTaskError`
of a failed task; Tune's actor manager then raises "Caught unexpected exception" and the whole
study crashes. Handled as the actor's death, the trial is retried from its checkpoint up to
`search.max_failures` times, as when the OS's OOM killer ends it, and then recorded as failed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def as_actor_deaths(warn: Callable[[str], None], manager: type | None = None) -> None:
    """Make Tune's actor manager (`manager`: Ray's RayActorManager, in this process) treat a
    trial task ended by any Ray error but a task's own (`RayTaskError`) as its actor's death.
    Idempotent; where Ray no longer has the private method it patches, `warn` says so instead."""
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError

    try:
        if manager is None:
            from ray.air.execution._internal.actor_manager import RayActorManager as manager
        failed = manager._actor_task_failed
    except (ImportError, AttributeError):
        warn(f"Ray {ray.__version__} has no RayActorManager._actor_task_failed, which tuner "
             "patches: a trial whose worker Ray's memory monitor kills may end the study "
             "instead of being retried")
        return
    if getattr(failed, "as_actor_deaths", False):
        return

    @functools.wraps(failed)
    def task_failed(self: Any, tracked_actor_task: Any, exception: Exception) -> None:
        if isinstance(exception, RayError) and not isinstance(exception,
                                                              (RayActorError, RayTaskError)):
            exception = RayActorError(error_msg=str(exception))
        failed(self, tracked_actor_task=tracked_actor_task, exception=exception)

    task_failed.as_actor_deaths = True  # type: ignore[attr-defined]
    manager._actor_task_failed = task_failed
