"""Train a recorded trial's config again, logging each evaluation to an MLflow run: what a replay
(tuner.inspect.replay) and a seed check (tuner.search.winners.seed_check) share."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from model.config import TrainConfig
from tuner.store.write import log_metrics


def train_logged(client: Any, run_id: str, config: TrainConfig, *, threads: int | None,
                 end_tokens: int | None = None, resume_from: Path | None = None,
                 log_best: bool = False) -> dict[int, float]:
    """Train `config` (on `threads` torch threads; up to `end_tokens`), logging each evaluation to
    run `run_id` (with `log_best`, `best_val_loss` too whenever it improves, as a trial's); its
    val_loss by tokens. A stop or failure ends the run KILLED or FAILED."""
    import torch

    from model.train import EvalRecord, train
    from tuner.store.layout import METRICS

    losses: dict[int, float] = {}

    def on_eval(record: EvalRecord) -> bool:
        values = record.as_metrics()
        logged = {k: values[k] for k in METRICS if k in values}
        if log_best and record.val_loss < min(losses.values(), default=math.inf):
            logged["best_val_loss"] = record.val_loss
        losses[record.tokens] = record.val_loss
        log_metrics(client, run_id, logged, record.tokens)
        return end_tokens is not None and record.tokens >= end_tokens

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        train(config, on_eval=on_eval, resume_from=resume_from)
    except KeyboardInterrupt:  # stopped (Ctrl-C, SIGTERM): what it trained stays recorded
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    finally:
        torch.set_num_threads(before)
    return losses
