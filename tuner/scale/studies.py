"""The studies of a fit, read from MLflow: each finished full-budget trial's α_max, B, best
val_loss and compute C = 6·N·D; a transfer study is one study a size, and the WSD forks of a
study's trials are one study a fork budget (`budget.forks`).

N counts the non-embedding parameters (Kaplan's and DeepSeek's convention, and the trainer's MFU
count): every parameter but the token embedding. D is the tokens the trial trained. Only trials
that completed their budget count: a stopped trial's val_loss is at fewer tokens, and PBT's changed
their values as they ran. A fork is a WSD run of its own budget D_k, complete however far its trial
went on: the forks of every trial but PBT's count.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from model.config import ModelConfig
from model.memory import parameter_count
from tuner.errors import UserError
from tuner.scale.fit import FITTED, Study, Trial
from tuner.store import runs
from tuner.store.layout import DATASET_TAG, FORK_METRIC, SIZE_TAG, STATUS_TAG, TRANSFER_TAG
from tuner.store.rows import trial_row


def non_embedding_params(model: ModelConfig) -> int:
    """N: the model's parameters but its token embedding (the output projection counts)."""
    return parameter_count(model) - model.vocab_size * model.d_model


def read_studies(client: Any, names: list[str], workdir: Path) -> list[Study]:
    """Each named study's finished full-budget trials, a transfer study's one study a size;
    UserError for a study named twice, an unknown one, one without such a trial, or studies of
    different datasets."""
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--study {', '.join(twice)} given more than once")
    studies = [size for i, name in enumerate(names)
               for size in read_study(client, name, workdir / str(i))]
    datasets = {s.dataset for s in studies}
    if len(datasets) > 1:
        groups = "; ".join(f"{', '.join(s.name for s in studies if s.dataset == d)} "
                           f"({'dataset ' + d[:12] + '…' if d else 'no dataset hash recorded'})"
                           for d in sorted(datasets, key=str))
        raise UserError(f"the studies trained on different datasets: {groups}; a fit compares "
                        "sizes on one dataset")
    return studies


def read_study(client: Any, name: str, workdir: Path) -> list[Study]:
    """Study `name`'s finished full-budget trials, of one model size; a transfer study's by
    size, each named STUDY:FIELD=SIZE; its trials' WSD forks by budget, each named
    STUDY:fork=K (the K-th shortest)."""
    parent = runs.study_parent(client, name)
    field = parent.data.tags.get(TRANSFER_TAG)
    found: dict[str, list[tuple[int, int, Trial]]] = {}  # size -> (N, D, trial) of each trial
    searched: set[str] = set()
    for run in runs.trial_runs(client, parent):
        searched |= set(runs.searched_values(run)[0]) & set(FITTED)
        if runs.pbt_values(run) is not None:
            continue
        completed = run.data.tags.get(STATUS_TAG) == "completed"
        forks = dict(runs.metric_points(client, run.info.run_id, FORK_METRIC))  # D → val_loss
        if not completed and not forks:
            continue
        row = trial_row(client, run)
        config = runs.trial_config(client, run, workdir / row.run_id)
        params = non_embedding_params(config.model)
        size = f"{name}:{field}={run.data.tags.get(SIZE_TAG)}" if field else name
        values = {"lr_max": config.lr_max, "batch_size": config.batch_size}
        points = [(size, row.tokens, row.val_loss)] if completed else []
        budgets = [steps * config.tokens_per_step for _, steps in config.fork_points()]
        points += [(f"{size}:fork={budgets.index(d) + 1}", d, loss) for d, loss in forks.items()
                   if d in budgets]
        for where, tokens, loss in points:
            if math.isfinite(loss):
                found.setdefault(where, []).append((params, tokens, Trial(
                    row.run_id, row.trial_id, values, loss, 6.0 * params * tokens)))
    if not found:
        raise UserError(f"study {name!r} has no trial that completed its budget with a finite "
                        "val_loss, nor a WSD fork (a fit reads those only)")
    studies = []
    for size, listed in found.items():
        counts = sorted({n for n, _, _ in listed})
        if len(counts) > 1:
            raise UserError(f"study {size!r} trained models of several sizes (N = "
                            f"{', '.join(f'{n:,}' for n in counts)}): a fit takes one size a "
                            "study (or a transfer study's sizes)")
        studies.append(Study(size, counts[0], int(statistics.median(d for _, d, _ in listed)),
                             frozenset(searched), [t for _, _, t in listed],
                             parent.data.tags.get(DATASET_TAG), name if size != name else None))
    return studies
