"""The top trials of a study, and the best one written as a fixed study file (no distributions)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import TrainConfig
from model.metrics import perplexity
from tuner.inspect import runs
from tuner.redact import redact


@dataclass
class TrialRow:
    """One trial as the `best` table shows it."""

    trial_id: str
    run_id: str
    params: dict[str, str]  # searched parameter, as the study file names it → its logged value
    val_loss: float  # the best of the trial's evaluations
    tokens: int  # trained
    status: str
    pbt: bool = False  # PBT changed its values as it ran: `params` are those it ended with
    usable: bool = True  # it can be the best: a finite val_loss, and it neither diverged nor failed

    @property
    def perplexity(self) -> float:
        return perplexity(self.val_loss)


def top_trials(client: Any, study: str, k: int) -> list[TrialRow]:
    """The `k` best trial runs of a study, best first."""
    ranked = runs.ranked(runs.trial_runs(client, runs.study_parent(client, study)))
    return [trial_row(client, run) for run in ranked[:k]]


def trial_row(client: Any, run: Any, points: list[tuple[int, float]] | None = None) -> TrialRow:
    """What the tables show of one trial run (`points`: its val_loss history, if read already)."""
    from tuner.search.mlflow_layout import STATUS_TAG, TRIAL_TAG

    if points is None:
        points = runs.metric_points(client, run.info.run_id, "val_loss")
    params, by_pbt = runs.searched_values(run)
    return TrialRow(
        trial_id=run.data.tags.get(TRIAL_TAG, "?"), run_id=run.info.run_id, params=params,
        val_loss=runs.metric(run, "best_val_loss"), tokens=points[-1][0] if points else 0,
        status=run.data.tags.get(STATUS_TAG, "?") + (" (PBT)" if by_pbt else ""), pbt=by_pbt,
        usable=runs.counts_as_best(run))


def symbol(name: str) -> str:
    """The symbol of a study parameter (SYMBOLS.md: α_max, T_warmup/T_total), else its name."""
    from tuner.space.params import ALL_DEFS

    return ALL_DEFS[name].symbol if name in ALL_DEFS else name


def fixed_study(config: TrainConfig, recorded: dict[str, Any], name: str, description: str,
                tracking_uri: str) -> dict[str, Any]:
    """A study file that runs exactly `config` as its one trial: every parameter a constant, the
    resources of the recorded (resolved) study, recorded at `tracking_uri` (the store it was read
    from; its credentials masked, as everywhere), no scheduler to stop it early."""
    from tuner.space.params import BUDGET_NAMES, HPARAM_DEFS, MODEL_DEFS, used_values

    used = used_values(config)
    return {
        "name": name,
        "description": description,
        "data": {"path": config.data},
        "model": {n: used[n] for n in MODEL_DEFS if n in used},
        "hparams": {n: used[n] for n in HPARAM_DEFS if n in used},
        "budget": {field: used[trainer] for field, trainer in BUDGET_NAMES.items()
                   if trainer in used},
        "search": {"algorithm": "random", "scheduler": "none", "num_samples": 1},
        "resources": recorded.get("resources", {}),
        "tracking": {"uri": redact(tracking_uri)},
    }


def export_best(client: Any, study: str, path: Path, workdir: Path) -> TrialRow:
    """Write the study's best trial to `path` as a fixed study file; return that trial's row."""
    import yaml

    parent = runs.study_parent(client, study)
    run = runs.best_of(runs.trial_runs(client, parent), study)
    row = trial_row(client, run)
    config = runs.reproducible_config(client, run, workdir, "exported")
    recorded = runs.recorded_study(client, parent, workdir)
    description = (f"Best trial {row.trial_id} of study {study} (MLflow run {row.run_id}): "
                   f"best val_loss {row.val_loss:.4f}, {row.tokens:,} tokens trained.")
    data = fixed_study(config, recorded, f"{study}-best", description, client.tracking_uri)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return row
