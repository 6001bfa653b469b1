"""Writing a run's metrics, params and tags in batches, as MLflow's `log_batch` takes them."""

from __future__ import annotations

import time
from typing import Any

from tuner.store.redact import redact

BATCH = 100  # MLflow's limit on params or tags per log_batch call


def log_metrics(client: Any, run_id: str, values: dict[str, float], step: int,
                own_steps: dict[str, int] | None = None) -> None:
    """Log `values` in one call, at `step` but for those given a step of their own."""
    from mlflow.entities import Metric

    now, steps = int(time.time() * 1000), own_steps or {}
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, int(steps.get(k, step)))
                                      for k, v in values.items()])


def log_params_tags(client: Any, run_id: str, params: dict[str, Any], tags: dict[str, str]
                    ) -> None:
    """Log a run's params (None as "None") and tags, in as many calls as MLflow's limit needs,
    with any credentials masked (a failed trial's traceback may quote a URI)."""
    from mlflow.entities import Param, RunTag

    param_list = [Param(k, "None" if v is None else redact(str(v))) for k, v in params.items()]
    tag_list = [RunTag(k, redact(str(v))) for k, v in tags.items()]
    for start in range(0, max(len(param_list), len(tag_list)), BATCH):
        client.log_batch(run_id, params=param_list[start:start + BATCH],
                         tags=tag_list[start:start + BATCH])
