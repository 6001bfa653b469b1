"""Trials answered from a table of learning curves (tuner.search.trial.curve_table) instead of
trained: a replayed study's trainable (`tuner search --curve-table`) calls, where it would call
model.train.train, the stand-in `CurveReplay.trainer` gives it, with the same arguments and the
same results: the evaluations of the table's configuration nearest to the trial's sample, for
the table seed its training seed picks, or a surrogate's curve of the sample for its training
seed (tuner.search.trial.surrogate), checkpointed, stopped and diverged as a run would be."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tuner.search.trial.curve_table import CurveTable
from tuner.search.trial.surrogate import Surrogate

CURVE_KEY = "curve"  # in a replayed trial's checkpoint: [configuration, table seed]


class CurveReplay:
    """The trainer of a replayed study's trials: each reads its curve from `table` (a table of
    curves or a surrogate)."""

    def __init__(self, table: CurveTable | Surrogate) -> None:
        self.table = table

    def curves(self, params: Mapping[str, Any], seed: int) -> tuple[int, int, Any, Any, float]:
        """The configuration and seed answering the trial of `params` trained with `seed` (a
        surrogate's: -1 and the seed), its val_loss and train loss at the tokens (a surrogate
        models no train loss: its val_loss stands in), and its tokens/s."""
        source = self.table
        if isinstance(source, Surrogate):
            losses = source.curve(params, seed)
            return -1, seed, losses, losses, float(source.tokens[-1]) / source.run_seconds(params)
        index, row_seed = source.lookup(params, seed)
        return (index, row_seed, source.val_loss[index, row_seed],
                source.train_loss[index, row_seed], float(source.tokens_per_s[index, row_seed]))

    def trainer(self, params: Mapping[str, Any]) -> Callable[..., Any]:
        """model.train.train's stand-in for the trial of sample `params`."""
        return functools.partial(self.replay, dict(params))

    def replay(self, params: dict[str, Any], config: Any,
               on_eval: Callable[[Any], bool | None] | None = None,
               checkpoint_dir: str | Path | None = None, resume_from: str | Path | None = None,
               sample_at: Sequence[float] | None = None,
               checkpoint_now: Callable[[], bool] | None = None,
               on_checkpoint: Callable[[int, Any], None] | None = None,
               checkpoint_every_s: float = 0.0, checkpoint_at: Sequence[float] = (),
               on_fork: Callable[[Any], None] | None = None) -> Any:
        """What `train(config, ...)` returns for the trial of `params`, its evaluations the
        table's: a checkpoint at the last, at the first past each of `checkpoint_at`, and at
        every one when `checkpoint_every_s` is 0 (no time passes in a replay); at a stop asked
        by `checkpoint_now`, one of where it is. No text samples, no forks."""
        from model.checkpoint import read_checkpoint, write_checkpoint
        from model.metrics import perplexity
        from model.schedules import LRSchedule
        from model.train import EvalRecord, TrainResult

        table = self.table
        index, seed, losses, train_losses, speed = self.curves(params, config.seed)
        schedule, last = LRSchedule.from_config(config), len(table.tokens) - 1
        result = TrainResult(status="completed")
        if resume_from is not None:
            result.records = [EvalRecord(**r) for r in read_checkpoint(resume_from)["records"]]

        def save(step: int) -> None:
            result.checkpoint = write_checkpoint(
                {"model": {}, "iteration": step, "records": [asdict(r) for r in result.records],
                 CURVE_KEY: [index, seed]}, checkpoint_dir)

        for k in range(len(result.records), last + 1):
            if checkpoint_dir is not None and checkpoint_now is not None and checkpoint_now():
                at = result.records[-1] if result.records else None
                save(at.step if at else 0)
                if on_checkpoint is not None:
                    on_checkpoint(at.step if at else 0, at)
            tokens, val_loss = int(table.tokens[k]), float(losses[k])
            step, previous = tokens // config.tokens_per_step, (
                result.records[-1].tokens if result.records else 0)
            diverged = not math.isfinite(val_loss)
            record = EvalRecord(
                step=step, tokens=tokens, train_loss=float(train_losses[k]), val_loss=val_loss,
                val_ppl=perplexity(val_loss), lr=schedule.lr(step - 1), grad_norm=math.nan,
                tokens_per_s=speed, mfu=math.nan, elapsed_s=tokens / speed if speed else 0.0,
                checkpointed=checkpoint_dir is not None and not diverged and (
                    k == last or checkpoint_every_s <= 0
                    or any(previous < mark <= tokens for mark in checkpoint_at)))
            result.records.append(record)
            if record.checkpointed:
                save(step)
            stop = bool(on_eval(record)) if on_eval is not None else False
            if diverged or stop:
                result.status = "diverged" if diverged else "stopped"
                break
        result.steps = result.records[-1].step if result.records else 0
        result.tokens = result.records[-1].tokens if result.records else 0
        return result
