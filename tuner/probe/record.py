"""A probe as an MLflow run of its study's experiment (docs/mlflow_layout.md): not nested, tagged
role `probe`, with its sweep as metrics against the step, its settings and range as params, and
probe.png and its trainer config as artifacts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from model.config import TrainConfig
from model.lr_probe import ProbeCurve, ProbeRange, zero_phase
from tuner.store.layout import NOTE_TAG, PROBE_OUTCOME_TAG, ROLE_TAG, STUDY_TAG
from tuner.store.write import log_metrics, log_params_tags

PROBE_PNG, PROBE_CONFIG = "probe.png", "probe_config.json"


def log_probe(client: Any, experiment_id: str, study: str, config: TrainConfig,
              sweep: dict[str, Any], curve: ProbeCurve, found: ProbeRange,
              shown: tuple[float, float] | None, tags: dict[str, str], png: Path) -> str:
    """Record the probe of `study`: its `sweep` settings, the range `shown` (as suggested), the
    `tags` of where it ran; the run id."""
    run_id = client.create_run(experiment_id, run_name=f"probe-{study}", tags={
        ROLE_TAG: "probe", STUDY_TAG: study, PROBE_OUTCOME_TAG: found.problem or "range",
        NOTE_TAG: probe_note(study, config, curve, found, shown), **tags}).info.run_id
    try:
        log_params_tags(client, run_id, {
            **sweep, "batch_size": config.batch_size, "d_model": config.model.d_model,
            "optimizer": config.optimizer, "steps_run": len(curve.points),
            "tokens": curve.tokens, "diverged": curve.diverged,
            "lr_max_lo": shown and shown[0], "lr_max_hi": shown and shown[1],
            "lr_first_fall": found.lo, "lr_steepest": found.steepest,
            "lr_lowest_loss": found.lowest}, {})
        finite = [p for p in curve.points if math.isfinite(p.loss)]
        lagless = dict(zip((p.step for p in finite), zero_phase([p.loss for p in finite])))
        for p in curve.points:
            log_metrics(client, run_id, {"lr": p.lr, "train_loss": p.loss,
                                         "smoothed_loss": p.smoothed,
                                         **({"lagless_loss": lagless[p.step]}
                                            if p.step in lagless else {})}, p.step)
        client.log_dict(run_id, config.to_dict(), PROBE_CONFIG)
        client.log_artifact(run_id, str(png))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def probe_note(study: str, config: TrainConfig, curve: ProbeCurve, found: ProbeRange,
               shown: tuple[float, float] | None) -> str:
    """The run's description: the range (or why none) and what the sweep trained."""
    head = (f"**α_max range [{shown[0]:.2g}, {shown[1]:.2g}]**" if shown is not None
            else f"**no range: {found.problem}** — {found.advice}")
    return (f"{head}\n\nα range test of study {study}: {len(curve.points)} steps at B "
            f"{config.batch_size}, d_model {config.model.d_model}, {curve.tokens:,} tokens; "
            f"{'stopped where the loss diverged' if curve.diverged else 'reached the last α'}")
