"""A study budget in compute (search.study_budget): no new trial once the study's trials trained
it, and the running ones stop at their next stopping point."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from studies import fresh_store, mlflow_runs, run_tuner, write_space

ASHA = {"scheduler": "asha", "asha": {"grace_period": 5120, "reduction_factor": 2}}


@dataclass
class Reported:
    """What the watch reads of a Tune trial: its id and last result."""

    trial_id: str
    last_result: dict[str, Any] = field(default_factory=dict)


def _watch(tmp_path: Path, dataset: Path, search: dict[str, Any]) -> Any:
    from tuner.search.searchers.study_budget import BudgetWatch
    from tuner.space import load_study

    return BudgetWatch(load_study(write_space(tmp_path, "budget", dataset, search=search)))


def _result(tokens: int) -> dict[str, Any]:
    return {"tokens": tokens, "budget_tokens": 40960, "val_loss": 5.0}


def test_once_spent_each_trial_stops_at_its_next_rung(tmp_path: Path, dataset: Path) -> None:
    """Rungs at 5,120·2^k tokens; a budget of 1.25 full trials (51,200 tokens). The result that
    spends it stops its trial if it reaches a rung; another runs on to its next rung; one that
    had reported nothing stops at its first result; one at its end ends anyway, unmarked."""
    watch = _watch(tmp_path, dataset, {**ASHA, "study_budget": {"full_trials": 1.25}})
    assert watch.limit == 51200 and watch.points == (5120, 10240, 20480, 40960)
    watch.count([Reported("done", _result(40960)), Reported("b", _result(7680))])
    assert not watch.exhausted and watch.reason == ""
    assert not watch.stops("a", _result(2560))  # 51,200 tokens: spent
    assert watch.exhausted and watch.owed == {"done", "a", "b"}
    assert watch.reason == ("stopped once its study budget was spent: 51,200 of 51,200 tokens "
                            "(1.25 full trials)")
    assert not watch.stops("b", _result(8960))  # its next rung is 10,240
    stopped = _result(10240)
    assert watch.stops("b", stopped) and stopped["stopped_by_study_budget"]
    assert watch.stops("a", _result(5120))
    assert watch.stops("late", _result(2560))  # drawn before, started after: at once
    assert not watch.stops("c", _result(40960))  # at its end: it completes


def test_a_scheduler_without_rungs_stops_at_the_next_result(tmp_path: Path,
                                                           dataset: Path) -> None:
    """With no rungs (none, median, PBT) any result is a stopping point; tokens given as such;
    a resumed watch counts what Tune's trials trained before."""
    watch = _watch(tmp_path, dataset, {"scheduler": "none", "study_budget": {"tokens": 10000}})
    assert watch.points == ()
    watch.count([Reported("a", _result(7680)), Reported("b", _result(2560)), Reported("new")])
    assert watch.exhausted and watch.owed == {"a", "b"}
    assert watch.reason == "stopped once its study budget was spent: 10,240 of 10,000 tokens"
    assert watch.stops("b", _result(3840))


@pytest.mark.parametrize(("budget", "named"), [
    ({"full_trials": 2, "tokens": 100}, "search.study_budget: give exactly one"),
    ({}, "search.study_budget: give exactly one"),
    ({"full_trials": 0}, "search.study_budget.full_trials"),
    ({"full_trials": float("inf")}, "search.study_budget.full_trials"),
    ({"tokens": 0}, "search.study_budget.tokens"),
    ({"trials": 3}, "search.study_budget.trials"),
])
def test_bad_budgets_exit_2_naming_the_field(tmp_path: Path, budget: dict, named: str) -> None:
    from inspect_study import tuner

    space = write_space(tmp_path, "bad", tmp_path, search={"study_budget": budget})
    code, out = tuner("space", "validate", str(space))
    assert code == 2 and named in out, out


def _rung_below(tokens: int) -> int:
    """The last rung (5,120·2^k) short of `tokens`, 0 below the first."""
    return max((5120 * 2 ** k for k in range(4) if 5120 * 2 ** k < tokens), default=0)


@pytest.mark.slow
def test_a_study_ends_once_its_budget_is_spent(tmp_path: Path, dataset: Path,
                                               mlflow_store_template: Path) -> None:
    """1.25 full trials of budget, ASHA, two trials at a time. One sample trains a full trial
    (40,960 tokens) and the study ends with budget left. Extended to 12 samples, the resumed
    study counts that trial's tokens from Tune's state: once 10,240 more are trained it draws no
    trial, the running ones stop at their next rung (both below 20,480 tokens then, so its new
    trials train less than a full trial), and it ends, exit 0, saying so, having trained at most
    the budget and what the two running trials needed to reach their next rung. A resume then
    finds it finished."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "budgeted", dataset,
                        hparams={"lr_max": {"loguniform": [1e-3, 3e-2]}},
                        search={"algorithm": "random", "num_samples": 1, **ASHA,
                                "study_budget": {"full_trials": 1.25}})
    args = ["--tracking-uri", uri, "--storage", str(tmp_path / "ray")]
    first = run_tuner(["search", "--space", str(space), *args], cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "budget was spent" not in first.stdout + first.stderr
    [(first_run)] = mlflow_runs(uri, "budgeted")[2]
    proc = run_tuner(["search", "--resume", "--name", "budgeted", "--num-samples", "12", *args],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client, parent, trials = mlflow_runs(uri, "budgeted")
    reason = parent.data.tags["tuner.stop_reason"]
    assert parent.info.status == "FINISHED"
    assert reason.startswith("stopped once its study budget was spent: ")
    assert reason.endswith(" of 51,200 tokens (1.25 full trials)")
    assert f"finished ({reason})" in proc.stdout
    assert 2 <= len(trials) < 12
    tokens = {r.info.run_id: int(max(m.step for m in client.get_metric_history(
        r.info.run_id, "val_loss"))) for r in trials}
    assert tokens[first_run.info.run_id] == 40960
    assert f"{sum(tokens.values()):,} of 51,200" in reason
    overshoot = sorted((t - _rung_below(t) for t in tokens.values()), reverse=True)[:2]
    assert 51200 <= sum(tokens.values()) <= 51200 + sum(overshoot)
    assert sum(tokens.values()) - 40960 < 40960
    by_budget = [r for r in trials if "study budget" in r.data.tags["tuner.status_detail"]]
    assert by_budget and all(r.data.tags["tuner.status"] == "stopped" for r in by_budget)
    assert all(r.info.status == "FINISHED" for r in trials)
    again = run_tuner(["search", "--resume", "--name", "budgeted", *args], cwd=tmp_path)
    assert again.returncode == 0 and f"finished ({reason})" in again.stdout, again.stdout
    assert len(mlflow_runs(uri, "budgeted")[2]) == len(trials)
