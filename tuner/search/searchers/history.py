"""A finished study's trials as (searched parameters, objective) pairs, as its searcher saw them
(to warm-start a new search), and such pairs as Optuna trials of a define-by-run space (also to
rate parameter importance)."""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.store import runs
from tuner.store.connect import connect_existing
from tuner.store.layout import STATUS_TAG, STOPPED

USABLE = ("completed", "stopped", "diverged")  # scored, as a failure in the trainer is (inf)


def earlier_study(study: str, tracking_uri: str
                  ) -> tuple[dict[str, Any], list[tuple[dict[str, Any], float]],
                             dict[int, dict[int, float]], set[int]]:
    """The resolved study `study` recorded (study.json), (the searcher's parameters, the last
    reported objective) of every trial its searcher was told a value of, as it saw them
    (diverged ones and failed ones score inf), each one's evaluations by index (`evaluations`),
    and the indices of those its scheduler stopped."""
    client = connect_existing(tracking_uri)
    parent = runs.study_parent(client, study)
    with tempfile.TemporaryDirectory(prefix="tuner-history-") as tmp:
        recorded = runs.recorded_study(client, parent, Path(tmp))
        search = recorded["search"]
        if search["scheduler"] == "pbt":
            raise UserError(f"study {study!r} ran PBT, which changed its trials' values as they "
                            "ran: no values go with a loss to warm-start from; use a study with "
                            "a searcher")
        told = told_runs(runs.trial_runs(client, parent))
        curves = {index: evaluations(client, run, search["metric"])
                  for index, run in enumerate(told)}
        stopped = {index for index, run in enumerate(told)
                   if run.data.tags.get(STATUS_TAG) == STOPPED}
        return recorded, trial_points(client, told, search["metric"], Path(tmp)), curves, stopped


def setup_differences(recorded: dict[str, Any], study: Any) -> list[str]:
    """Where the `recorded` study (its study.json) trained otherwise than `study` (its data, model
    or budget; seeds aside), as "budget.tokens: 163840 there, 81920 here": its losses then
    compare with this study's only loosely."""
    now = study.resolved()
    return [f"{section}.{key}: {there.get(key)} there, {here.get(key)} here"
            for section in ("data", "model", "budget")
            for there, here in [(recorded.get(section) or {}, now[section])]
            for key in sorted(set(there) | set(here))
            if key != "seed" and there.get(key) != here.get(key)]


def told_runs(trial_runs: list[Any]) -> list[Any]:
    """The trial runs the searcher was told a value of, oldest first."""
    from tuner.store.layout import FAILED, FAILED_IN_TAG

    def told(run: Any) -> bool:
        tags = run.data.tags
        if tags.get(STATUS_TAG) != FAILED:
            return tags.get(STATUS_TAG) in USABLE
        # before the tag: a trainer's error was recorded as its traceback, Tune's as its detail
        before = "process" if tags.get("tuner.error") == tags.get("tuner.status_detail") else \
            "trainer"
        return tags.get(FAILED_IN_TAG, before) == "trainer"

    return sorted(filter(told, trial_runs), key=lambda r: r.info.start_time)


def trial_points(client: Any, told: list[Any], metric: str,
                 workdir: Path) -> list[tuple[dict[str, Any], float]]:
    """(searched.json, last value of `metric`) of each of the `told` trial runs: a trial that
    failed in the trainer reported the worst value."""
    from tuner.search.trial.trainable import WORST
    from tuner.store.layout import FAILED

    return [(searched(client, r, workdir), WORST if r.data.tags.get(STATUS_TAG) == FAILED
             else runs.metric(r, metric)) for r in told]


def evaluations(client: Any, run: Any, metric: str) -> dict[int, float]:
    """The run's values of `metric` by evaluation (1, 2, …, in tokens' order; a step reported
    again after a resume counts once), as Optuna's intermediate values of a live study."""
    first: dict[int, float] = {}
    for entry in client.get_metric_history(run.info.run_id, metric):
        first.setdefault(entry.step, entry.value)
    return {k: first[step] for k, step in enumerate(sorted(first), start=1)}


def searched(client: Any, run: Any, workdir: Path) -> dict[str, Any]:
    """The values the searcher gave a trial run (its searched.json)."""
    return runs.json_artifact(client, run, "searched.json", workdir / run.info.run_id)


def optuna_trials(study: Any, points: list[tuple[dict[str, Any], float]],
                  curves: dict[int, dict[int, float]] | None = None,
                  stopped: set[int] | frozenset[int] = frozenset()) -> list[Any]:
    """Each point as a COMPLETE Optuna trial of the study's define-by-run space, or, where
    `stopped` holds its index, a PRUNED one, with its evaluations in `curves` as intermediate
    values (as a live study tells its trials: BOHB models them by evaluation); UserError when a
    point does not fit the space (a parameter it does not search, a value outside a range or the
    choices). A value the space searches, but not under the point's conditions, is left out."""
    import warnings

    import optuna

    from tuner.search.searchers.algorithms import WARM_START_ATTR

    trials, curves = [], curves or {}
    state = optuna.trial.TrialState
    for index, (params, value) in enumerate(points):
        told = {"state": state.PRUNED if index in stopped else state.COMPLETE,
                "intermediate_values": curves.get(index) or None}
        fixed = optuna.trial.FixedTrial(params)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # out-of-range values: create_trial raises below
                study.sample(fixed)
            extra = sorted(set(params) - set(fixed.params) - set(study.searched()))
            if extra:
                raise ValueError(f"parameters {', '.join(extra)} are not searched here")
            trials.append(optuna.trial.create_trial(
                params=fixed.params, value=value, distributions=fixed.distributions,
                user_attrs={WARM_START_ATTR: True}, **told))
        except ValueError as err:
            missing = re.search(r"parameter '(\w+)' is not found", str(err))  # Optuna's words
            why = (f"{missing[1]} is searched here, but the earlier study did not search it: a "
                   "warm start needs a study that searched the same parameters" if missing
                   else str(err))
            raise UserError(f"an earlier trial ({_show(params)}) does not fit this space: "
                            f"{why}") from None
    return trials


def _show(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) and math.isfinite(v) else f"{k}={v}"
                     for k, v in params.items())
