"""The simulator of studies on a table of curves (benchmarks/search_sim.py): trials advance in
token order as concurrent trials would, Ray's schedulers stop and pause them, and a replayed
`tuner search --curve-table` makes the same trials, stops and best."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from curve_tables import BENCHMARKS, build, load_script, write_space
from studies import fresh_store, mlflow_runs, run_tuner

from tuner.errors import UserError
from tuner.search.searchers.algorithms import stopping_points
from tuner.search.trial import curve_table
from tuner.space import load_study

sim = load_script(BENCHMARKS / "search_sim.py", "search_sim")
BUDGET = 2048  # the tiny study's tokens a trial


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> tuple[Path, Path]:
    """The tiny study file and a table of 8 of its configurations, built once."""
    folder = tmp_path_factory.mktemp("sim")
    space = write_space(folder, dataset)
    return space, build(space, folder / "work", folder / "table.npz", configs=8)


def study_of(space: Path, seed: int = 0, **search: Any) -> Any:
    """The tiny study with its search section changed, searcher and training seed `seed`."""
    return load_study(sim.with_search(yaml.safe_load(space.read_text()), seed, **search))


def test_trials_advance_in_token_order_two_at_a_time(tiny: tuple[Path, Path]) -> None:
    """Random search without a scheduler, 2 at a time: each trial starts when a slot frees,
    trains the whole budget on the curve of its nearest configuration and the table seed of
    the study's seed, and the best is the lowest val_loss of them all."""
    space, path = tiny
    table = curve_table.load(path)
    run = sim.simulate(study_of(space, seed=3, algorithm="random", scheduler="none",
                                num_samples=5, max_concurrent=2), table)
    assert [t.start for t in run.trials] == [0, 0, BUDGET, BUDGET, 2 * BUDGET]
    assert [t.row for t in run.trials] == [table.nearest(t.config) for t in run.trials]
    assert {t.ended for t in run.trials} == {"completed"} and run.tokens == 5 * BUDGET
    lowest = [float(np.min(table.val_loss[t.row, 1])) for t in run.trials]
    assert [t.best for t in run.trials] == lowest
    assert run.best is run.trials[int(np.argmin(lowest))]
    spent = [tokens for tokens, _ in run.curve]
    assert spent == sorted(spent) and spent[-1] == run.tokens and len(spent) == 5 * 4
    assert run.curve[-1][1] == min(lowest)


@pytest.mark.parametrize("scheduler", ["asha", "hyperband", "median", "pasha", "topk"])
def test_schedulers_stop_trials_where_they_may(scheduler: str, tiny: tuple[Path, Path]) -> None:
    """Ray's own schedulers and tuner's end trials early: ASHA and PASHA at their rungs,
    HyperBand at its brackets' milestones (its paused trials resumed where they paused), the
    median rule after its grace period, top-K at the first evaluation past its budget; every
    token a trial trained is counted once."""
    space, path = tiny
    table = curve_table.load(path)
    limit = {"max_concurrent": None} if scheduler == "hyperband" else {"max_concurrent": 2}
    if scheduler == "topk":
        limit["topk"] = {"budget": 700, "k": 3}
    study = study_of(space, algorithm="tpe", scheduler=scheduler, num_samples=12, **limit)
    run = sim.simulate(study, table, slots=2)
    assert len(run.trials) == 12 and "stopped" in {t.ended for t in run.trials}
    assert run.tokens == sum(t.tokens for t in run.trials)
    for trial in run.trials:
        assert trial.tokens == table.tokens[trial.points - 1]
        assert (trial.ended == "completed") == (trial.tokens == BUDGET)
    stops = {t.tokens for t in run.trials if t.ended == "stopped"}
    if scheduler in ("asha", "pasha"):
        assert stops <= set(stopping_points(study))
    elif scheduler == "topk":
        assert stops == {1024} and sum(t.ended == "completed" for t in run.trials) >= 3
    elif scheduler == "median":
        assert min(stops) >= study.search.median.grace_period
    assert run.best is min(run.trials, key=lambda t: t.best)


def test_a_diverged_trial_ends_there_and_is_never_the_best(tiny: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    """A configuration whose curve diverges at its second evaluation (inf, NaN after): its
    trials train no further and are not recommended, however low their first loss."""
    space, path = tiny
    table = curve_table.load(path)
    arrays = {name: getattr(table, name).copy() for name in curve_table.ARRAYS}
    arrays["val_loss"][:, :, 0] += 1.0
    arrays["val_loss"][0, :, 0] = 0.1  # the lowest loss of the table, then a divergence
    arrays["val_loss"][0, :, 1], arrays["val_loss"][0, :, 2:] = np.inf, np.nan
    broken = curve_table.load(curve_table.save(tmp_path / "diverged.npz", table.meta, arrays))
    run = sim.simulate(study_of(space, algorithm="random", scheduler="none", num_samples=16,
                                max_concurrent=2), broken)
    diverged = [t for t in run.trials if t.row == 0]
    assert diverged and all(t.ended == "diverged" and t.tokens == 1024 for t in diverged)
    assert run.best.row != 0 and run.curve[-1][1] == pytest.approx(0.1)


def test_a_table_of_another_study_is_refused(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """The simulator checks the table against the study as `tuner search --curve-table` does."""
    space, path = tiny
    data = yaml.safe_load(space.read_text())
    data["model"]["d_model"] = 32
    with pytest.raises(UserError, match="a curve table of another study: its model.d_model"):
        sim.simulate(load_study(data), curve_table.load(path))


def replayed_trials(uri: str, name: str, folder: Path) -> tuple[list[tuple], int]:
    """A replayed study's trials in the order they started: (sampled params, status, tokens
    trained); and the place of its best trial (the parent's tuner.best_trial_id) among them."""
    client, parent, runs = mlflow_runs(uri, name)
    runs.sort(key=lambda r: r.info.start_time)
    trials = []
    for run in runs:
        where = folder / run.info.run_id
        where.mkdir()
        params = json.loads(Path(client.download_artifacts(run.info.run_id, "searched.json",
                                                           str(where))).read_text())
        tokens = max(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        trials.append((params, run.data.tags["tuner.status"], tokens))
    ids = [run.data.tags["tuner.trial_id"] for run in runs]
    return trials, ids.index(parent.data.tags["tuner.best_trial_id"])


@pytest.mark.slow
def test_simulator_agrees_with_the_replayed_study(tiny: tuple[Path, Path], tmp_path: Path,
                                                  mlflow_store_template: Path) -> None:
    """`tuner search --curve-table` (Ray Tune, OptunaSearch, the scheduler, MLflow) and the
    simulator give the same trials (sampled values), the same stops and the same best: TPE
    modelling from its third trial; ASHA with rungs at 1/4 and 1/2 (seeds 0, 1), PASHA on them
    (seed 2), top-K (1 of the trials so far at 2048/9 tokens, seed 0); one trial at a time
    (with more, a replayed trial reports as fast as the driver takes its results, not in token
    order: docs/benchmarks.md)."""
    space, path = tiny
    table = curve_table.load(path)
    uri = fresh_store(tmp_path, mlflow_store_template)
    stops: dict[str, int] = {}
    for seed, scheduler in ((0, "asha"), (1, "asha"), (2, "pasha"), (0, "topk")):
        name = f"agree-{seed}-{scheduler}"
        data = {**sim.with_search(yaml.safe_load(space.read_text()), seed, num_samples=6,
                                  max_concurrent=1, scheduler=scheduler), "name": name}
        file = tmp_path / f"{name}.yaml"
        file.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        study = load_study(file)
        proc = run_tuner(["search", "--space", str(file), "--curve-table", str(path),
                          "--tracking-uri", uri, "--storage", str(tmp_path / "ray")],
                         cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        real, best = replayed_trials(uri, name, tmp_path)
        run = sim.simulate(study, table)
        assert real == [(t.config, t.ended, t.tokens) for t in run.trials], name
        assert run.trials[best] is run.best, name
        stops[scheduler] = stops.get(scheduler, 0) + sum(status == "stopped"
                                                         for _, status, _ in real)
    # each scheduler's stops were compared, not only full trials
    assert set(stops) == {"asha", "pasha", "topk"} and min(stops.values()) >= 1, stops


def test_a_token_budget_ends_the_study_at_the_next_stopping_points(
        tiny: tuple[Path, Path]) -> None:
    """With a budget of 3 full trials, no trial starts once the tokens trained reach it, and
    each running trial stops at its next ASHA rung or its end; with the table's seconds as the
    clock, a B-8 trial's evaluations come sooner than a B-4 trial's."""
    space, path = tiny
    table = curve_table.load(path)
    study = study_of(space, seed=1, algorithm="random", num_samples=40, max_concurrent=2,
                     asha={"grace_period": 512, "reduction_factor": 2})
    run = sim.simulate(study, table, budget=3 * BUDGET, clock="cpu")
    reached = run.times[next(i for i, (spent, _) in enumerate(run.curve) if spent >= 3 * BUDGET)]
    assert 3 < len(run.trials) < 40 and all(t.start <= reached for t in run.trials)
    assert 3 * BUDGET <= run.tokens < 3 * BUDGET + 2 * BUDGET
    late = [t for t in run.trials if t.start >= 0 and t.tokens > 0]
    assert {t.tokens for t in late} <= set(stopping_points(study)) | {BUDGET}
    answers = sim.TableAnswers(table)
    pace = {t.trial_id: answers.answer(t.config, 1).seconds / BUDGET for t in run.trials}
    first, second = run.trials[:2]
    assert run.trials[2].start == pytest.approx(min(pace[t.trial_id] for t in (first, second))
                                                * 512)
    assert len({table.params[t.row, 4] for t in run.trials}) == 2  # both B met


def test_a_warm_started_study_starts_near_the_earlier_studys_best(
        tiny: tuple[Path, Path]) -> None:
    """An earlier study's trials are told their val_loss at a quarter of the budget (its own
    seed's curve); a study warm-started from them with start_near 3 runs first their best, then
    the draws tuner search's own near_best makes around it, then its searcher's."""
    from tuner.search.searchers.algorithms import warm_seed
    from tuner.search.searchers.prior_start import near_best

    space, path = tiny
    table = curve_table.load(path)
    earlier = study_of(space, seed=7, algorithm="random", scheduler="none", num_samples=6,
                       max_concurrent=2)
    study = study_of(space, seed=2, algorithm="random", num_samples=8, max_concurrent=2,
                     warm_start="earlier", start_near=3)
    warm = sim.earlier_trials(earlier, study, table, 2, 0.25)
    told = sim.simulate(earlier, table).trials
    assert [t.value for t in warm] == [float(table.val_loss[t.row, 1, 0]) for t in told]
    run = sim.simulate(study, table, warm_trials=warm)
    best = min(warm, key=lambda t: t.value).params
    near = near_best(study, warm, 3, warm_seed(2, warm))
    assert [t.config for t in run.trials[:3]] == near and near[0] == best
    assert all(t.config["batch_size"] == best["batch_size"] for t in run.trials[:3])
    assert best not in [t.config for t in run.trials[3:]] and len(run.trials) == 8


def test_a_surrogate_answers_any_point_with_its_seed_noise(tiny: tuple[Path, Path]) -> None:
    """A surrogate's trial is its sample's own curve for the study's seed; the recommendation's
    loss is its noise-free final. The table's second opinion keeps each sample's B."""
    from tuner.search.trial import surrogate

    space, path = tiny
    table = curve_table.load(path)
    fitted, _ = surrogate.fit(table, dense=64)
    study = study_of(space, seed=5, algorithm="random", scheduler="none", num_samples=6,
                     max_concurrent=2)
    run = sim.simulate(study, fitted)
    for trial in run.trials:
        assert trial.row == -1
        assert np.array_equal(trial.losses, fitted.curve(trial.config, 5))
        assert trial.true_final == pytest.approx(fitted.mean(trial.config)[-1])
    assert run.best.best == min(float(np.min(t.losses)) for t in run.trials)
    weighted = sim.TableAnswers(table, fitted.length_scales)
    for trial in run.trials:
        row = weighted.row(trial.config)
        assert table.params[row, 4] == trial.config["batch_size"]


def test_search_efficiency_default_setting_is_a_study_file_with_nothing_in_search() -> None:
    """benchmarks/search_efficiency.py's "default" setting: its random searches and its
    combinations leave max_concurrent unset (as many at once as 2 CPUs allow), and its "asha
    default" scheduler is the schema's ASHA (a full trial / 9, ×3); lm's sets its own."""
    import argparse

    efficiency = load_script(BENCHMARKS / "search_efficiency.py", "search_efficiency")
    args = argparse.Namespace(settings=["default", "lm"], samplers=["random"], slow=False,
                              schedulers=["asha default"], baselines=1, seed_list=[1],
                              start_near=[])
    base = yaml.safe_load((BENCHMARKS / "curves" / "space.yaml").read_text())
    planned = efficiency.tasks(args, 131072)
    for setting, sampler, label, search, seed, slots, _ in planned:
        study = load_study(sim.with_search(base, seed, **search))
        assert study.search.max_concurrent == (None if setting == "default" else 4), setting
        assert slots == (2 if setting == "default" else 4)
        if label == "asha default":
            assert study.search.asha.grace_period == 131072 // 9
            assert study.search.asha.reduction_factor == 3
    assert [task[:3] for task in planned if task[1] != "baseline"] == [
        ("default", "random", "asha default"), ("lm", "random", "asha default")]
    assert [t[3]["num_samples"] for t in planned if t[1] == "baseline"] == [16, 64]


def test_search_efficiency_compares_with_random_search(tiny: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    """benchmarks/search_efficiency.py on the tiny table: the target is the median final best
    of independent random searches; random search without a scheduler reaches it in about
    half its seeds; ASHA starts more samples in the same budget;
    regrets are in seed sd and never negative; run again on its --results, it simulates
    nothing and prints the same tables."""
    space, path = tiny

    def efficiency() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(BENCHMARKS / "search_efficiency.py"), "--source", str(path),
             "--space", str(space), "--seeds", "4", "--baselines", "4", "--workers", "1",
             "--settings", "quickstart", "--samplers", "random", "--schedulers", "none",
             "asha 1/4 ×4", "--results", str(tmp_path / "results.jsonl")],
            capture_output=True, text=True, timeout=300, check=False)

    proc, again = efficiency(), efficiency()
    assert proc.returncode == 0, proc.stderr
    assert "0 studies in" in again.stdout and "(12 read from --results)" in again.stdout
    assert again.stdout.splitlines()[1:-1] == proc.stdout.splitlines()[1:-1]
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| random |")}
    assert set(rows) == {"none", "asha 1/4 ×4"}, proc.stdout
    tokens, samples = rows["none"][0], rows["none"][4]
    assert 1 <= int(tokens.rsplit(" ", 1)[1]) <= 4, tokens  # seeds that reached the target
    assert int(rows["asha 1/4 ×4"][4]) > int(samples) >= 10
    for regret in (r[2].replace("[", "").replace("]", "").split(" ") for r in rows.values()):
        low, high = map(float, regret[1].split("–"))  # a bootstrap 90% interval of the median
        assert 0 <= low <= float(regret[0]) <= high, regret
    assert all(r[3].endswith("%") for r in rows.values())
    assert "the medians of 4 independent random searches" in proc.stdout
    assert all(r[5].split(" ")[-1].isdigit() for r in rows.values())  # P5 on the best seen
