"""The top trials of a study, and the best one written as a fixed study file (no distributions)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from model.config import TrainConfig
from tuner.errors import UserError
from tuner.store import runs
from tuner.store.layout import TRANSFER_TAG
from tuner.store.redact import redact
from tuner.store.rows import TrialRow, trial_row
from tuner.store.transfer import Transfer, read_transfer


def top_trials(client: Any, study: str, k: int, workdir: Path
               ) -> tuple[list[TrialRow], Transfer | None]:
    """The `k` best trial runs of a study, best first; and a transfer study's trials by size
    (None for a study that transfers nothing), read from the same rows."""
    parent = runs.study_parent(client, study)
    ranked = runs.ranked(runs.trial_runs(client, parent))
    if TRANSFER_TAG not in parent.data.tags:
        return [trial_row(client, run) for run in ranked[:k]], None
    rows = [trial_row(client, run) for run in ranked]
    return rows[:k], read_transfer(runs.recorded_study(client, parent, workdir), rows)


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
    row, config, recorded = best_config(client, study, workdir)
    description = (f"Best trial {row.trial_id} of study {study} (MLflow run {row.run_id}): "
                   f"best val_loss {row.val_loss:.4f}, {row.tokens:,} tokens trained.")
    write_study_file(path, fixed_study(config, recorded, f"{study}-best", description,
                                       client.tracking_uri))
    return row


def write_study_file(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` as YAML, whole or not at all; UserError naming `path` on failure."""
    import yaml

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a folder that is read-only
        raise UserError(f"--export {path}: cannot write it: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)


def best_config(client: Any, study: str, workdir: Path, run_id: str | None = None
                ) -> tuple[TrialRow, TrainConfig, dict[str, Any]]:
    """The study's best trial (or its trial run `run_id`): its row, its config and the resolved
    study it recorded."""
    parent = runs.study_parent(client, study)
    run = runs.get_run(client, run_id) if run_id else runs.best_of(runs.trial_runs(client, parent),
                                                                   study)
    config = runs.reproducible_config(client, run, workdir, "exported")
    return trial_row(client, run), config, runs.recorded_study(client, parent, workdir)
