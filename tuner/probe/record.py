"""A probe as an MLflow run of its study's experiment (docs/mlflow_layout.md): made before it
trains, ended FAILED when it fails (KILLED when stopped); not nested, tagged role `probe`, with
its sweep as metrics against the step (and its batch advice's B_simple as `noise_scale` against
the short run's step), its settings, range and suggested B's as params, and probe.png and its
trainer config as artifacts."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from model.config import TrainConfig
from model.lr_probe import ProbeCurve, ProbeRange, zero_phase
from tuner.probe.batch import BatchAdvice, choice_yaml
from tuner.store.layout import NOTE_TAG, PROBE_OUTCOME_TAG, ROLE_TAG, STUDY_TAG
from tuner.store.write import log_metrics, log_params_tags

PROBE_PNG, PROBE_CONFIG = "probe.png", "probe_config.json"


def start_probe(client: Any, experiment_id: str, study: str, tags: dict[str, str]) -> str:
    """The probe's run of `study`, RUNNING, with the `tags` of where it runs: made before the
    probe trains (a store that cannot be written fails first); its id."""
    return client.create_run(experiment_id, run_name=f"probe-{study}", tags={
        ROLE_TAG: "probe", STUDY_TAG: study, **tags}).info.run_id


@contextmanager
def probe_ended(client: Any, run_id: str) -> Iterator[None]:
    """Within: the probe's work; then its run ends FINISHED, or KILLED on a stop, or FAILED on an
    error (a study file that --write could not replace included)."""
    try:
        yield
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def log_probe(client: Any, run_id: str, study: str, config: TrainConfig, sweep: dict[str, Any],
              curve: ProbeCurve, found: ProbeRange, shown: tuple[float, float] | None,
              png: Path, batch: BatchAdvice | None = None) -> None:
    """Record the probe of `study` in its run: its `sweep` settings, the range `shown` (as
    suggested), its `batch` advice."""
    note = probe_note(study, config, curve, found, shown) + batch_note(batch)
    log_params_tags(client, run_id, {
        **sweep, "batch_size": config.batch_size, "d_model": config.model.d_model,
        "optimizer": config.optimizer, "steps_run": len(curve.points),
        "tokens": curve.tokens, "diverged": curve.diverged,
        "lr_max_lo": shown and shown[0], "lr_max_hi": shown and shown[1],
        "lr_first_fall": found.lo, "lr_steepest": found.steepest,
        "lr_lowest_loss": found.lowest, **batch_params(batch)},
        {PROBE_OUTCOME_TAG: found.problem or "range", NOTE_TAG: note})
    finite = [p for p in curve.points if math.isfinite(p.loss)]
    lagless = dict(zip((p.step for p in finite), zero_phase([p.loss for p in finite])))
    for p in curve.points:
        log_metrics(client, run_id, {"lr": p.lr, "train_loss": p.loss,
                                     "smoothed_loss": p.smoothed,
                                     **({"lagless_loss": lagless[p.step]}
                                        if p.step in lagless else {})}, p.step)
    for step, noise in batch.points if batch is not None else ():
        log_metrics(client, run_id, {"noise_scale": noise,
                                     "noise_scale_tokens": noise * batch.context}, step)
    client.log_dict(run_id, config.to_dict(), PROBE_CONFIG)
    client.log_artifact(run_id, str(png))


def probe_note(study: str, config: TrainConfig, curve: ProbeCurve, found: ProbeRange,
               shown: tuple[float, float] | None) -> str:
    """The run's description: the range (or why none) and what the sweep trained."""
    head = (f"**α_max range [{shown[0]:.2g}, {shown[1]:.2g}]**" if shown is not None
            else f"**no range: {found.problem}** — {found.advice}")
    return (f"{head}\n\nα range test of study {study}: {len(curve.points)} steps at B "
            f"{config.batch_size}, d_model {config.model.d_model}, {curve.tokens:,} tokens; "
            f"{'stopped where the loss diverged' if curve.diverged else 'reached the last α'}")


def batch_params(batch: BatchAdvice | None) -> dict[str, Any]:
    """The batch advice's params: the short run's α and tokens, B_simple at its end, the largest
    B that fits, the suggested B's (comma-separated; none where `problem` says why)."""
    if batch is None:
        return {}
    noise = batch.noise_scale
    return {"noise_lr": batch.lr, "noise_tokens": batch.tokens, "noise_scale": noise,
            "noise_scale_tokens": None if noise is None else noise * batch.context,
            "batch_largest_fit": batch.largest,
            "batch_suggested": ",".join(map(str, batch.suggested)) or None,
            "batch_problem": batch.problem or None}


def batch_note(batch: BatchAdvice | None) -> str:
    """The run's description of the batch advice ("" without one)."""
    if batch is None:
        return ""
    if batch.problem:
        return f"\n\n**no B suggested: {batch.problem}**"
    return (f"\n\n**B: {choice_yaml(batch.suggested)}** from B_simple "
            f"{batch.noise_scale:.3g} sequences at the end of {batch.tokens:,} tokens at α "
            f"{batch.lr:.2g}")
