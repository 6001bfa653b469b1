"""A fit's prediction as a fixed study file: the largest size's best trial with α_max (and B,
where fitted) as predicted and the target's token budget (`tuner best --study FIT --export`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from model.config import ConfigError, TrainConfig, fraction_of
from tuner.errors import UserError
from tuner.inspect.best import best_config, fixed_study, write_study_file
from tuner.scale.fit import FITTED
from tuner.scale.record import read_fit


def at_target(config: TrainConfig, values: dict[str, Any], tokens: int) -> TrainConfig:
    """`config` with `values` (lr_max, batch_size) and a budget of `tokens`: α_min keeps its
    ratio to α_max, the warmup its fraction of the steps, and the run as many evaluations."""
    warmup, before = config.warmup_iters / config.steps, config.steps * config.tokens_per_step
    changed = dataclasses.replace(config, **values, total_iters=None, total_tokens=tokens)
    if config.lr_min is not None:
        changed.lr_min = float(f"{config.lr_min / config.lr_max * changed.lr_max:.12g}")
    changed.warmup_iters = fraction_of(warmup, changed.steps)
    if config.eval_tokens is not None:
        changed.eval_tokens = max(1, round(config.eval_tokens * tokens / before))
    else:
        changed.eval_interval = max(1, round(config.eval_interval * changed.steps / config.steps))
    return changed


def export_prediction(client: Any, run: Any, path: Path, workdir: Path) -> dict[str, Any]:
    """Write the prediction of fit `run` to `path` as a fixed study file; return the fit
    (scaling.json); UserError for a fit made without a target."""
    fit = read_fit(client, run, workdir)
    name, target = fit["name"], fit["target"]
    if not fit["prediction"]:
        raise UserError(f"scaling fit {name!r} has no prediction to export: it was made without "
                        "--target-params and --target-tokens (run `tuner scale` again with them)")
    source = fit["export"]["study"]
    size = next(s["params"] for s in fit["studies"] if s["best_run_id"] == fit["export"]["run_id"])
    row, config, recorded = best_config(client, source, workdir, fit["export"]["run_id"])
    values = {n: p["exported"] for n, p in fit["prediction"].items()}
    try:
        changed = at_target(config, values, target["tokens"])
        changed.validate()
    except ConfigError as err:
        raise UserError(f"the prediction of fit {name!r} does not make a valid trainer config "
                        f"from study {source}'s best trial: {err}") from None
    shown = ", ".join(f"{FITTED[n]} = {v}" for n, v in values.items())
    description = (f"{shown}, as predicted by scaling fit {name} (MLflow run {run.info.run_id}) "
                   f"for N = {target['params']:,} non-embedding parameters trained on D = "
                   f"{target['tokens']:,} tokens (C = {target['compute']:.3g} FLOPs). The rest is "
                   f"best trial {row.trial_id} of study {source}, a model of N = {size:,}: set "
                   f"`model` to one of N = {target['params']:,}.")
    write_study_file(path, fixed_study(changed, recorded, f"{name}-target", description,
                                       client.tracking_uri))
    return fit
