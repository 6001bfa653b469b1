"""Searchers and schedulers (search/searchers/algorithms.py, median_rule.py): Optuna, ASHA,
HyperBand, PBT."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from studies import (
    _assert_stopped_by,
    _assert_tokens_counted_once,
    _descendants,
    _wait_exited,
    _wait_until,
    by_status,
    fresh_store,
    mlflow_runs,
    run_tuner,
    search_refused,
    start_search,
    write_space,
)


def _run_study(tmp_path: Path, space: Path, template: Path) -> tuple[str, Any, list[Any], str]:
    """Run the study in `space` to its end; its store's URI, parent run, child runs and output."""
    uri = fresh_store(tmp_path, template)
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri, "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Error handling checkpoint" not in proc.stderr  # Tune lost none of the trials' files
    _, parent, children = mlflow_runs(uri, yaml.safe_load(space.read_text())["name"])
    assert parent.info.status == "FINISHED"
    assert not [r for r in children if r.info.status == "RUNNING"]
    return uri, parent, children, proc.stdout


@pytest.mark.slow
def test_hyperband_study(tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """HyperBand stops trials. With a budget of 8 grace periods (max_t 3 units of a third of it,
    η 3) it fills its brackets from the least aggressive: 2 trials of the full budget, then a
    bracket of 3 that keeps 1 at 1 unit and trains it to the full budget, then a new round's
    first bracket: 1 more of the full budget."""
    space = write_space(tmp_path, "hyperband", dataset,
                        hparams={"lr_max": {"loguniform": [1e-4, 0.1]}},
                        search={"scheduler": "hyperband", "num_samples": 6, "max_concurrent": None,
                                "algorithm": "random", "asha": {"grace_period": 5120}})
    uri, parent, children, _ = _run_study(tmp_path, space, mlflow_store_template)
    assert parent.data.tags["tuner.scheduler"] == "hyperband" and len(children) == 6
    _assert_stopped_by(uri, children, "HyperBand", budget=40960)
    grouped = by_status(children)
    assert (len(grouped["completed"]), len(grouped["stopped"])) == (4, 2)
    # Tune's state keeps trials HyperBand paused at the full budget: restored, they trained on
    # (and the driver spun); a study that ended resumes to its summary alone
    proc = run_tuner(["search", "--resume", "--name", "hyperband", "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "study hyperband finished: 4 completed, 2 stopped" in proc.stdout
    _, again, after = mlflow_runs(uri, "hyperband")
    assert {(r.info.run_id, r.info.end_time) for r in after} == \
        {(r.info.run_id, r.info.end_time) for r in children}
    assert again.info.end_time == parent.info.end_time


@pytest.mark.slow
def test_an_unfinished_hyperband_study_is_not_resumed(tmp_path: Path, dataset: Path,
                                                      mlflow_store_template: Path) -> None:
    """Ray Tune saves no HyperBand brackets: a resumed study waited for ever on trials they had
    paused. `--resume` refuses it before Ray starts (exit 2) and names --warm-start."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "killed", dataset,
                        search={"scheduler": "hyperband", "num_samples": 6, "max_concurrent": None,
                                "algorithm": "random", "asha": {"grace_period": 5120}})
    storage = tmp_path / "ray"
    driver = start_search(space, uri, storage, tmp_path)
    _wait_until(uri, driver, lambda runs, tokens: any(tokens.values()))
    trial_processes = [pid for pid, cmd in _descendants(driver.pid)
                       if cmd.startswith("ray::ImplicitFunc")]
    driver.send_signal(signal.SIGINT)
    out, said = driver.communicate(timeout=120)
    assert driver.returncode == 130
    _wait_exited(trial_processes)  # none writes in the study's folder after the snapshot below
    assert out.splitlines()[-1] == ("continue it with: tuner search --space FILE --name NEW "
                                    "--warm-start killed (a HyperBand study cannot be resumed)")
    # the last frame, as MLflow records them: no trial left "paused" or "running"
    headline = next(line for line in reversed(said.splitlines()) if "random + hyperband" in line)
    assert re.search(r"\b\d+ interrupted\b", headline), said
    assert not re.search(r"\b\d+ (paused|running)\b", headline), said
    saved = sorted((p, p.stat().st_mtime_ns) for p in storage.rglob("*"))
    proc = run_tuner(["search", "--resume", "--name", "killed", "--storage", str(storage)],
                     cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "uses HyperBand" in proc.stderr and "--warm-start killed" in proc.stderr
    assert sorted((p, p.stat().st_mtime_ns) for p in storage.rglob("*")) == saved


@pytest.mark.slow
def test_pbt_study_perturbs_within_the_space(tmp_path: Path, dataset: Path,
                                             mlflow_store_template: Path) -> None:
    """PBT (random population; α_max and β2 perturbed every 10240 tokens): the trial that is
    behind takes the other's weights and perturbed values, recorded as hp.* metrics and the
    tuner.pbt_config tag, and β2 stays inside its range. PBT draws γ_step for every trial; only
    a trial on the step schedule uses and records it. Each trial takes every core, so one trains
    at a time and PBT takes turns: the other waits for resources, and PBT pauses a trial at each
    perturbation point while another waits, so the two meet there in the same order however
    fast the machine is. (Two at once, one trial could end before the other's first report on a
    loaded machine, leaving PBT nothing to compare it with.)"""
    from ray._private.utils import get_num_cpus  # the cores the local Ray counts

    space = write_space(tmp_path, "pbt", dataset,
                        hparams={"lr_max": {"loguniform": [1e-4, 3e-2]},
                                 "beta2": {"uniform": [0.9, 0.99]},
                                 "schedule": {"choice": ["step", "cosine"]},
                                 "step_gamma": {"uniform": [0.2, 0.8]}},
                        search={"scheduler": "pbt", "num_samples": 2,
                                "pbt": {"perturbation_interval": 10240, "quantile_fraction": 0.5}},
                        resources={"cpus_per_trial": get_num_cpus()})
    uri, parent, children, out = _run_study(tmp_path, space, mlflow_store_template)
    assert parent.data.tags["tuner.algorithm"] == "random" and len(children) == 2
    assert {r.data.tags["tuner.status"] for r in children} == {"completed"}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    schedules = {run.data.params["schedule"] for run in children}
    assert "cosine" in schedules
    for run in children:
        on_step = run.data.params["schedule"] == "step"
        assert ("step_gamma" in run.data.tags["tuner.searched"].split(",")) == on_step
        assert ("step_gamma" in run.data.params) == on_step  # logged where it is used
        # the latest best_val_loss (what `tuner best` ranks by) is the best, clone or not
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert run.data.metrics["best_val_loss"] == min(m.value for m in history)
    exploited = [r for r in children if "tuner.pbt_config" in r.data.tags]
    assert exploited
    for run in exploited:
        beta2 = client.get_metric_history(run.info.run_id, "hp.beta2")
        lr = client.get_metric_history(run.info.run_id, "hp.lr_max")
        assert beta2 and lr and all(0.9 <= m.value <= 0.99 for m in beta2)
        config = json.loads(run.data.tags["tuner.pbt_config"])
        assert config["beta2"] == beta2[-1].value
        assert ("step_gamma" in config) == (config["schedule"] == "step")
    _pbt_study_inspected(client, uri, children, tmp_path, out)
    _assert_tokens_counted_once(client, parent, children, interval=5120)


def _pbt_study_inspected(client: Any, uri: str, children: list[Any], tmp_path: Path,
                         out: str) -> None:
    """The summary, `tuner best` and the report show the values a PBT trial ended with, and say
    it cannot be replayed; a warm start, which pairs values with a loss, refuses the study."""
    from tuner.errors import UserError
    from tuner.inspect import best, report
    from tuner.search.searchers import history
    from tuner.space.params import shown_value

    rows, _ = best.top_trials(client, "pbt", 2, tmp_path)
    for row in rows:
        run = next(r for r in children if r.info.run_id == row.run_id)
        final = json.loads(run.data.tags.get("tuner.pbt_config", "null"))
        assert row.pbt == (final is not None) and row.status.endswith("(PBT)") == row.pbt
        assert row.params["lr_max"] == str(final["lr_max"] if final else run.data.params["lr_max"])
    with pytest.raises(UserError, match="ran PBT"):
        history.earlier_study("pbt", uri)
    report.write_report(client, "pbt", tmp_path / "report", tmp_path)
    summary = (tmp_path / "report" / report.SUMMARY_MD).read_text()
    _, parent, _ = mlflow_runs(uri, "pbt")
    assert f"{int(parent.data.metrics['study/tokens_trained']):,} tokens trained in all" in summary
    assert ("no one config reproduces it" in summary) == rows[0].pbt
    assert ("tuner replay" in summary) != rows[0].pbt and "Not computed: PBT changed" in summary
    assert ("no one config reproduces it" in out) == rows[0].pbt != ("tuner replay" in out)
    assert f"lr_max={shown_value('lr_max', rows[0].params['lr_max'])}" in out  # 4 digits


@pytest.mark.parametrize("algorithm", ["tpe", "bohb", "random", "grid", "cmaes", "gp", "qmc"])
def test_every_searcher_suggests_seeded_trials_in_the_space(tmp_path: Path, dataset: Path,
                                                            algorithm: str) -> None:
    """Each algorithm, built as a study builds it (Optuna's sampler behind Ray's OptunaSearch),
    suggests values from the space, and the same seed suggests the same trials."""
    if algorithm == "cmaes":
        pytest.importorskip("cmaes")
    from tuner.search.searchers.algorithms import build_searcher
    from tuner.space import load_study

    grid = algorithm == "grid"
    hparams = ({"lr_max": {"grid": [1e-3, 3e-3, 1e-2]}} if grid else
               {"lr_max": {"loguniform": [1e-4, 1e-2]}, "beta2": {"uniform": [0.9, 0.99]}})
    study = load_study(write_space(tmp_path, algorithm, dataset, hparams=hparams,
                                   search={"algorithm": algorithm, "num_samples": 3}))

    def suggestions() -> list[dict[str, Any]]:
        searcher, suggested = build_searcher(study), []
        for i in range(3):
            suggested.append(searcher.suggest(f"t{i}"))
            searcher.on_trial_complete(f"t{i}", {"val_loss": 5.0 - i, "tokens": 40960})
        return suggested

    first = suggestions()
    assert first == suggestions()
    if grid:
        assert sorted(s["lr_max"] for s in first) == [1e-3, 3e-3, 1e-2]
    else:
        assert all(1e-4 <= s["lr_max"] <= 1e-2 and 0.9 <= s["beta2"] <= 0.99 for s in first)
        assert len({s["lr_max"] for s in first}) == 3


def test_a_trial_its_optuna_storage_ended_reports_again_after_a_resume(tmp_path: Path,
                                                                        dataset: Path) -> None:
    """With `search.storage`, a driver killed after telling the database a trial ended, before
    Tune saved its state, resumes the trial: its next result is taken as that of a finished
    trial, not an error that fails the study on every resume."""
    import optuna

    from tuner.search.searchers.algorithms import build_searcher
    from tuner.space import load_study

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = load_study(write_space(tmp_path, "told", dataset,
                                   hparams={"lr_max": {"loguniform": [1e-4, 1e-2]}},
                                   search={"algorithm": "tpe", "storage": storage}))
    searcher = build_searcher(study)
    searcher.suggest("t0")
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last save
    searcher.on_trial_complete("t0", {"val_loss": 3.0, "training_iteration": 4})
    resumed = build_searcher(study)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.on_trial_result("t0", {"val_loss": 3.0, "training_iteration": 4})
    resumed.on_trial_complete("t0", {"val_loss": 3.0, "training_iteration": 4})
    trials = optuna.load_study(study_name="told", storage=storage).trials
    assert [(t.state, t.value) for t in trials] == [(optuna.trial.TrialState.COMPLETE, 3.0)]


def test_a_trial_stopped_before_its_budget_reaches_optuna_as_pruned(tmp_path: Path,
                                                                   dataset: Path) -> None:
    """A trial that ended short of its budget, not in error, is told PRUNED with its evaluations
    (the one it was stopped on too: Tune passes the searcher none); one that trained its budget,
    COMPLETE; a trainer's error, COMPLETE with the worst value. stopped_as="complete" keeps Ray's
    way, a stopped trial COMPLETE with its last value."""
    import math

    import optuna

    from tuner.search.searchers.algorithms import build_searcher
    from tuner.space import load_study

    state = optuna.trial.TrialState
    study = load_study(write_space(tmp_path, "pruned", dataset,
                                   hparams={"lr_max": {"loguniform": [1e-4, 1e-2]}},
                                   search={"algorithm": "tpe", "scheduler": "asha"}))
    budget = study.full_trial_tokens()

    def told(stopped_as: str) -> list[tuple[Any, float, dict[int, float]]]:
        searcher = build_searcher(study, stopped_as=stopped_as)
        searcher.set_search_properties(None, None, {})
        ends = {"stopped": (budget // 4, {}), "full": (budget, {}),
                "error": (budget // 8, {"error": "ConfigError: no"})}
        for trial_id, (tokens, extra) in ends.items():
            searcher.suggest(trial_id)
            first = {"val_loss": 5.0, "training_iteration": 1, "tokens": budget // 8,
                     "budget_tokens": budget}
            searcher.on_trial_result(trial_id, first)
            last = {**first, "val_loss": 4.0, "training_iteration": 2, "tokens": tokens, **extra}
            if extra:
                last["val_loss"] = math.inf
            searcher.on_trial_complete(trial_id, last)
        return [(t.state, t.value, t.intermediate_values) for t in searcher._ot_study.trials]

    assert told("pruned") == [(state.PRUNED, 4.0, {1: 5.0, 2: 4.0}),
                              (state.COMPLETE, 4.0, {1: 5.0}),
                              (state.COMPLETE, math.inf, {1: 5.0})]
    assert told("complete") == [(state.COMPLETE, 4.0, {1: 5.0}), (state.COMPLETE, 4.0, {1: 5.0}),
                                (state.COMPLETE, math.inf, {1: 5.0})]


def test_the_median_rule_keeps_what_it_put_back_until_its_first_result(tmp_path: Path) -> None:
    """Tune saves its state every few seconds, and a resumed study's first result may come
    minutes later: a save in between keeps the results put back. The first result then keys
    them to the resumed study's trial objects, which are new ones."""
    import pickle

    from tuner.search.searchers.median_rule import ResumableMedianStoppingRule

    class Trial:
        status = "RUNNING"

        def __init__(self, trial_id: str) -> None:
            self.trial_id = trial_id

    class Controller:
        def __init__(self, trials: list[Trial]) -> None:
            self.trials = trials

        def get_trials(self) -> list[Trial]:
            return self.trials

        def get_live_trials(self) -> list[Trial]:
            return self.trials

    def rule() -> ResumableMedianStoppingRule:
        return ResumableMedianStoppingRule(metric="val_loss", mode="min", time_attr="tokens",
                                           grace_period=10)

    def saved(median: ResumableMedianStoppingRule, name: str) -> dict[str, list[int]]:
        median.save(str(tmp_path / name))
        state = pickle.loads((tmp_path / name).read_bytes())
        return {trial: [r["tokens"] for r in results]
                for trial, results in state["results"].items()}

    first, second = Trial("a"), Trial("b")
    before = rule()
    for tokens in (10, 20):
        for trial in (first, second):
            before.on_trial_result(Controller([first, second]), trial,
                                   {"tokens": tokens, "val_loss": 3.0})
    assert saved(before, "killed.pkl") == {"a": [10, 20], "b": [10, 20]}
    resumed = rule()
    resumed.restore(str(tmp_path / "killed.pkl"))
    assert saved(resumed, "again.pkl") == {"a": [10, 20], "b": [10, 20]}
    again = Trial("b")  # the resumed study's object for trial b, trained again from 20 tokens
    resumed.on_trial_result(Controller([Trial("a"), again]), again,
                            {"tokens": 20, "val_loss": 2.5})
    assert saved(resumed, "after.pkl") == {"a": [10, 20], "b": [10, 20]}
    assert [r["val_loss"] for r in resumed._results[again]] == [3.0, 2.5]


def test_a_new_study_on_a_taken_optuna_study_fails_before_ray(tmp_path: Path, dataset: Path,
                                                              mlflow_store_template: Path) -> None:
    """search.storage already holds an Optuna study of the name (an earlier study's): the new
    one would go on from its trials, so it is refused, naming the storage."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="taken", storage=storage).add_trial(
        optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "taken", dataset,
                        hparams={"lr_max": {"loguniform": [1e-4, 1e-2]}},
                        search={"algorithm": "tpe", "storage": storage})
    message = search_refused(tmp_path, space, uri)
    assert f"search.storage {storage} already holds an Optuna study 'taken'" in message
    assert len(optuna.load_study(study_name="taken", storage=storage).trials) == 1


def test_an_optuna_study_left_before_any_trial_is_taken_up_again(tmp_path: Path,
                                                                 dataset: Path) -> None:
    """search.storage holding the study's name with warm-start trials alone (an attempt that
    stopped before its first trial) is no reason to refuse; a missing file is not made."""
    import optuna

    from tuner.errors import UserError
    from tuner.search.searchers.algorithms import WARM_START_ATTR, check_storage_is_free
    from tuner.space import load_study

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = load_study(write_space(tmp_path, "again", dataset,
                                   hparams={"lr_max": {"loguniform": [1e-4, 1e-2]}},
                                   search={"algorithm": "tpe", "storage": storage}))
    check_storage_is_free(study)
    assert not (tmp_path / "optuna.db").exists()
    left = optuna.create_study(study_name="again", storage=storage)
    left.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0,
                                             user_attrs={WARM_START_ATTR: True}))
    check_storage_is_free(study)
    left.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=2.0))
    with pytest.raises(UserError, match="already holds an Optuna study 'again'"):
        check_storage_is_free(study)


def test_stopping_points_are_where_the_scheduler_decides(tmp_path: Path, dataset: Path) -> None:
    from tuner.search.searchers.algorithms import build_scheduler, stopping_points
    from tuner.space import load_study

    def study(**search: Any) -> Any:
        return load_study(write_space(tmp_path, "points", dataset, search=search))

    for asha in ({"grace_period": 5120, "reduction_factor": 2},
                 {"grace_period": 4096, "reduction_factor": 3, "brackets": 2}):
        asha_study = study(scheduler="asha", asha=asha)
        milestones = {milestone for bracket in build_scheduler(asha_study)._brackets
                      for milestone, _ in bracket._rungs}  # Ray's own rungs, every bracket
        assert set(stopping_points(asha_study)) == milestones
    assert stopping_points(study(scheduler="asha", asha={"grace_period": 4096,
                                                         "reduction_factor": 3})) == (
        4096, 12288, 36864)
    assert stopping_points(study(scheduler="none")) == ()
    assert stopping_points(study(scheduler="median")) is None


def test_pbt_moves_a_choice_to_another_of_its_values(tmp_path: Path, dataset: Path) -> None:
    """A searched choice that PBT perturbs goes to a neighbouring value (or a fresh draw), never
    to 1.2 times itself: β2 of 1.188 failed the trial, and None × 1.2 the study."""
    from ray.tune.schedulers.pbt import _explore

    from tuner.search.searchers.algorithms import pbt_mutations
    from tuner.space import load_study

    study = load_study(write_space(tmp_path, "pbtchoice", dataset, hparams={
        "lr_max": {"loguniform": [1e-4, 1e-2]}, "beta2": {"choice": [0.99, 0.999]},
        "grad_clip": {"choice": [0.5, 1.0, None]}},
        search={"scheduler": "pbt", "pbt": {"params": ["lr_max", "beta2", "grad_clip"]}}))
    mutations = pbt_mutations(study)
    assert mutations["beta2"] == [0.99, 0.999] and mutations["grad_clip"] == [0.5, 1.0, None]
    for _ in range(50):
        config, _ = _explore({"lr_max": 1e-3, "beta2": 0.99, "grad_clip": None}, mutations,
                             0.25, (1.2, 0.8), None)
        assert config["beta2"] in (0.99, 0.999) and config["grad_clip"] in (0.5, 1.0, None)


def test_pbt_runs_at_most_max_concurrent_trials(tmp_path: Path, dataset: Path) -> None:
    """Tune ignores max_concurrent_trials beside PBT's generator: the generator holds it."""
    from tuner.search.run.runner import tune_config
    from tuner.space import load_study

    study = load_study(write_space(tmp_path, "pbtone", dataset,
                                   hparams={"lr_max": {"loguniform": [1e-4, 1e-2]}},
                                   search={"scheduler": "pbt", "max_concurrent": 1}))
    assert tune_config(study).search_alg.max_concurrent == 1


def test_asha_rung_and_pbt_clipping() -> None:
    from tuner.search.faults.outcome import asha_rung
    from tuner.search.searchers.algorithms import clip_to_space

    assert [asha_rung(t, 5120, 2) for t in (5120, 10239, 10240, 40960)] == [0, 0, 1, 3]
    clipped = clip_to_space({"beta2": 1.1988, "batch_size": 40, "lr_max": 0.01},
                            {"beta2": (0.9, 0.999), "batch_size": (8, 32)})
    assert clipped == {"beta2": 0.999, "batch_size": 32, "lr_max": 0.01}



def test_bohb_models_a_warm_starts_trials_at_their_own_evaluations(tmp_path: Path,
                                                                    dataset: Path) -> None:
    """An earlier study's completed trials reach BOHB with their evaluations, as live ones do:
    each counts at every step it reported, not its final loss at the first rung this study's
    trials reached, which would mix the two fidelities."""
    import optuna

    from tuner.search.searchers.history import optuna_trials
    from tuner.search.searchers.rung_tpe import rung_values
    from tuner.space import load_study

    study = load_study(write_space(tmp_path, "warmbohb", dataset,
                                   hparams={"lr_max": {"loguniform": [1e-4, 1e-1]}}))
    earlier = optuna_trials(study, [({"lr_max": 1e-3}, 3.0), ({"lr_max": 1e-2}, 2.5)],
                            curves={0: {1: 5.0, 2: 3.0}, 1: {1: 4.0, 2: 2.5}})
    assert {t.state for t in earlier} == {optuna.trial.TrialState.COMPLETE}
    live = optuna.trial.create_trial(params={"lr_max": 3e-3}, value=4.5,
                                     distributions=earlier[0].distributions,
                                     intermediate_values={1: 4.5},
                                     state=optuna.trial.TrialState.PRUNED)
    observed = rung_values([*earlier, live], earlier[0].distributions)
    assert sorted(v for _, v in observed[1]) == [4.0, 4.5, 5.0]
    assert sorted(v for _, v in observed[2]) == [2.5, 3.0]


def test_bohb_models_the_furthest_rung_that_enough_trials_reached() -> None:
    """BOHB's sampler fits TPE to the step at least `min_points` trials reported, stopped ones
    included: 12 trials stopped at step 1, best near 1e-2, steer it there, though two trials
    at step 3 (too few to model) have lower losses near 1e-1; the same seed draws the same."""
    import math

    import optuna

    from tuner.search.searchers.rung_tpe import RungTPESampler

    space = {"x": optuna.distributions.FloatDistribution(1e-4, 1, log=True)}

    def suggestions(seed: int) -> list[float]:
        study = optuna.create_study(sampler=RungTPESampler(seed, min_points=8))
        for x in (0.1, 0.12):
            study.enqueue_trial({"x": x})
        for i in range(14):
            trial = study.ask(space)
            trial.report((math.log10(trial.params["x"]) + 2) ** 2 + 5, 1)
            if i < 2:
                trial.report(3.0, 3)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return [study.ask(space).params["x"] for _ in range(30)]

    drawn = suggestions(0)
    assert drawn == suggestions(0)
    near = sorted(abs(math.log10(x) + 2) for x in drawn)
    assert near[len(near) // 2] < 0.5  # random draws over four decades: a median of about 1
