"""Stop when flat (search.stop_when_flat) and the study's own seed check (search.confirm)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from studies import fresh_store, mlflow_runs, run_tuner, write_space

from tuner.search.searchers.flat_stop import Flatness


def test_flat_means_no_gain_over_the_margin_in_the_last_n_finished_trials():
    flat = Flatness(trials=2, finished=[1.0, 0.9])
    assert flat.improvement() is None  # N trials alone: nothing to compare with yet
    flat.finished.append(0.95)
    assert flat.improvement() == pytest.approx(0.1)  # the best went from 1.0 to 0.9
    flat.finished.append(math.inf)  # a diverged or failed trial improves nothing
    assert flat.improvement() == pytest.approx(0.0)
    assert Flatness(trials=1, finished=[math.inf, 2.0]).improvement() == math.inf


@pytest.mark.slow
def test_a_flat_study_stops_early_records_why_and_seed_checks_its_best(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """Trials that differ by a hair (the same seed, warmup 0–0.1%) are flat within the seed
    noise at once: the study stops after N + 1 finished trials, exit 0 with its best, its runs
    ended, the reason on the parent; search.confirm seed-checks the top 2 after; a resume finds
    it finished."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "flat", dataset, budget={"tokens": 10240},
                        hparams={"warmup_fraction": {"uniform": [0.0, 0.001]}},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 4,
                                "max_concurrent": 1,
                                "stop_when_flat": {"trials": 1, "margin": "noise"},
                                "confirm": {"top": 2, "seeds": 1}})
    args = ["--tracking-uri", uri, "--storage", str(tmp_path / "ray")]
    proc = run_tuner(["search", "--space", str(space), *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client, parent, children = mlflow_runs(uri, "flat")
    reason = parent.data.tags["tuner.stop_reason"]
    assert parent.info.status == "FINISHED" and reason.startswith("stopped when flat")
    assert "(the pooled seed sd)" in reason and f"finished ({reason})" in proc.stdout
    trials = [r for r in children if r.data.tags["tuner.role"] == "trial"]
    assert 2 <= len(trials) < 4
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["tuner.status"] for r in trials} <= {"completed", "stopped"}
    checks = [r for r in client.search_runs([parent.info.experiment_id])
              if r.data.tags["tuner.role"] == "confirmation"]  # nested under their trials
    assert {r.data.tags["tuner.seed"] for r in checks} == {"1"} and len(checks) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in checks} <= {r.info.run_id for r in trials}
    assert "confirmed where every rival's p < 0.05" in proc.stdout and "best trial" in proc.stdout
    again = run_tuner(["search", "--resume", "--name", "flat", *args], cwd=tmp_path)
    assert again.returncode == 0 and f"finished ({reason})" in again.stdout
    assert len(mlflow_runs(uri, "flat")[2]) == len(children)


@pytest.mark.parametrize(("search", "named"), [
    ({"confirm": {"top": 0}}, "search.confirm.top"),
    ({"confirm": {"seeds": 2, "rounds": 1}}, "search.confirm.rounds"),
    ({"stop_when_flat": {"margin": 0.01}}, "search.stop_when_flat.trials: is required"),
    ({"stop_when_flat": {"trials": 4, "margin": "noisy"}}, "search.stop_when_flat.margin: must be"),
    ({"stop_when_flat": {"trials": 4, "margin": -0.1}}, "search.stop_when_flat.margin: must be"),
    ({"stop_when_flat": {"trials": 4, "margin": float("inf")}}, "search.stop_when_flat.margin"),
])
def test_bad_settings_exit_2_naming_the_field(tmp_path: Path, search: dict, named: str) -> None:
    from inspect_study import tuner

    space = write_space(tmp_path, "bad", tmp_path, search=search)
    code, out = tuner("space", "validate", str(space))
    assert code == 2 and named in out, out
    good = write_space(tmp_path, "good", tmp_path, search={
        "confirm": {"top": 2}, "stop_when_flat": {"trials": 4, "margin": "noise"}})
    code, out = tuner("space", "validate", str(good))
    assert "search." not in out, out
