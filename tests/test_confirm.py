"""Seed-checked winners (`tuner best --confirm`), on a real recorded study without Ray."""

from __future__ import annotations

import math
import re
import subprocess

import pytest
import yaml
from inspect_study import SPACE, TRIALS, log_study, tuner
from mlflow import MlflowClient
from studies import ENV, TUNER

from tuner.inspect.report import read_findings
from tuner.search.run.runner import summarise
from tuner.search.winners import seed_check as confirm
from tuner.space import build_study
from tuner.store import runs
from tuner.store.layout import CONFIRMATION, CONFIRMS_RUN_TAG, ROLE_TAG

pytest_plugins = ["inspect_study"]


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory, byte_dataset, mlflow_store_template):
    """A study of 2 completed trials and a stopped one, confirmed by `tuner best --confirm 3
    --seeds 1`: (its record, the command's output)."""
    study = log_study(tmp_path_factory.mktemp("confirm"), "seeded", byte_dataset,
                      mlflow_store_template, trials=TRIALS[:3])
    code, out = tuner("best", "--study", study.name, "--confirm", "3", "--seeds", "1",
                      "--tracking-uri", study.uri)
    assert code == 0, out
    return study, out


def test_confirmations_rank_beside_their_trials_with_other_seeds(confirmed):
    """Each is nested under the trial it confirms, named after it and its seed, with its params
    (the seed aside) and its own best_val_loss: MLflow's runs table ranks it among the trials."""
    study, out = confirmed
    client = MlflowClient(tracking_uri=study.uri)
    parent = client.get_run(study.parent_id)
    made = confirm.confirmations(client, parent)
    assert len(made) == 2  # 2 completed trials × 1 seed
    by_trial = {}
    for run in made:
        trial = client.get_run(run.data.tags[CONFIRMS_RUN_TAG])
        assert run.data.tags[ROLE_TAG] == CONFIRMATION
        assert run.data.tags["mlflow.parentRunId"] == trial.info.run_id
        assert run.info.run_name == f"{trial.info.run_name}-seed1"
        assert run.data.params == {**trial.data.params, "seed": "1"} != trial.data.params
        assert runs.metric(run, "best_val_loss") == min(
            m.value for m in client.get_metric_history(run.info.run_id, "val_loss"))
        by_trial.setdefault(trial.info.run_id, set()).add(run.data.tags["tuner.seed"])
        assert math.isfinite(runs.metric(run, "val_loss"))
    assert list(by_trial.values()) == [{"1"}, {"1"}]  # the study's seed is 0
    assert "2 completed trials, fewer than the 3 asked" in out


def test_confirmations_are_never_trials(confirmed, tmp_path):
    study, _ = confirmed
    client = MlflowClient(tracking_uri=study.uri)
    parent = client.get_run(study.parent_id)
    assert sorted(r.info.run_id for r in runs.trial_runs(client, parent)) == sorted(study.run_ids)
    code, out = tuner("best", "--study", study.name, "--top", "10", "--tracking-uri", study.uri)
    assert code == 0, out
    table = [line for line in out.splitlines() if re.search(r"[0-9a-f]{32}", line)]
    assert len(table) == 3 and "3 best trials" in out
    found, _ = read_findings(client, study.name, parent, runs.trial_runs(client, parent), tmp_path)
    assert len(found.rows) == 3
    space = yaml.safe_load(SPACE.format(data=study.data, uri=study.uri))
    summary = summarise(build_study({**space, "name": study.name}))
    assert sum(summary.counts.values()) == 3 and summary.best_run_id == study.best_run_id
    import tuner as api

    assert sorted(api.trials(study.name, tracking_uri=study.uri)["run_id"]) == sorted(
        study.run_ids)


def test_each_trial_has_its_mean_sd_and_the_winner_a_test(confirmed):
    study, out = confirmed
    client = MlflowClient(tracking_uri=study.uri)
    result = confirm.recorded(client, client.get_run(study.parent_id))
    assert [len(t.losses) for t in result.trials] == [2, 2]  # its own run and a confirmation
    assert result.winner.mean <= result.trials[1].mean and result.winner.sd > 0
    rival = result.rivals[0]
    assert 0 < rival.p <= 1 and rival.lead >= 0
    assert result.verdict in ("confirmed", f"within noise of {rival.trial_id}")
    judged = (f"within noise of {rival.trial_id} (p {rival.p:.2g})" if not rival.significant
              else f"confirmed: ahead of {rival.trial_id} (p {rival.p:.2g})")
    assert (f"winner {result.winner.trial_id}: {judged}; confirmed where every rival's p < 0.05; "
            f"seed sd {result.noise:.4f}") in out
    assert f"val_loss {result.winner.mean:.4f} ± {result.winner.sd:.4f} over 2 seeds" in out
    parent = client.get_run(study.parent_id)
    assert parent.data.tags["tuner.confirmation"] == f"{result.winner.trial_id} {result.verdict}"


def test_a_second_confirm_trains_nothing_and_best_shows_the_result(confirmed):
    study, _ = confirmed
    code, out = tuner("best", "--study", study.name, "--confirm", "2", "--seeds", "1",
                      "--tracking-uri", study.uri)
    assert code == 0 and "confirming trial" not in out and "every rival's p < 0.05" in out
    code, out = tuner("best", "--study", study.name, "--tracking-uri", study.uri)
    assert code == 0 and "every rival's p < 0.05" in out


def test_the_api_gives_the_seed_check_and_confirms_again_without_training(confirmed):
    """tuner.best's and tuner.top_trials' trials carry their seed checks; tuner.confirm of trials
    confirmed already trains nothing and compares them as `tuner best` printed."""
    import tuner as api

    study, out = confirmed
    checked = api.confirmation(study.name, tracking_uri=study.uri)
    seen = []
    again = api.confirm(study.name, top=2, seeds=1, tracking_uri=study.uri, progress=seen.append)
    assert seen == [] and again.lines() == checked.lines()
    assert all(f"  {line}" in out for line in checked.lines())
    top = {t.run_id: t for t in api.top_trials(study.name, 3, tracking_uri=study.uri)}
    winner, rival = checked.trials
    shown = top[winner.run_id].seed_check
    assert shown.losses == winner.losses and shown.mean == winner.mean and shown.sd == winner.sd
    assert shown.verdict == checked.verdict
    assert top[rival.run_id].seed_check.verdict.endswith(f"the winner {winner.trial_id} (Welch p "
                                                         f"{checked.rivals[0].p:.3g})")
    assert sum(t.seed_check is None for t in top.values()) == 1  # the stopped trial
    best = api.best(study.name, tracking_uri=study.uri)
    assert best.seed_check == top[best.run_id].seed_check


def test_welch_matches_the_textbook_and_takes_noiseless_seeds():
    t, p = confirm.welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0])
    # means 2 and 5.5, variances 1 and 5/3: t = -3.5 / √(1/3 + 5/12), about 4.96 degrees of freedom
    assert t == pytest.approx(-3.5 / math.sqrt(0.75)) and p == pytest.approx(0.0101, abs=5e-4)
    assert confirm.welch([1.0, 1.0], [2.0, 2.0]) == (-math.inf, 0.0)
    seeded = [confirm.Seeded("a", "ra", {0: 1.0, 1: 1.1}), confirm.Seeded("b", "rb", {0: 1.0,
                                                                                   1: 1.2})]
    assert confirm.compare(seeded).verdict == "within noise of b"


def test_report_shows_the_seed_check(confirmed, tmp_path):
    study, _ = confirmed
    code, out = tuner("report", "--study", study.name, "--out", str(tmp_path),
                      "--tracking-uri", study.uri)
    assert code == 0, out
    summary = (tmp_path / "summary.md").read_text()
    page = (tmp_path / "study.html").read_text()
    assert "## Seed check" in summary and "every rival's p < 0.05" in summary
    assert "<h2>Seed check</h2>" in page and "± " in page
    assert "3 trials (2 completed, 1 stopped)" in summary  # confirmations are no trials


def test_the_verdict_gives_each_rivals_p_beside_it_and_the_rule():
    close = confirm.Seeded("b", "rb", {0: 1.01, 1: 1.0, 2: 1.03})
    far = confirm.Seeded("c", "rc", {0: 2.0, 1: 2.01, 2: 2.02})
    result = confirm.compare([confirm.Seeded("a", "ra", {0: 1.0, 1: 1.01, 2: 1.02}), close, far])
    p_close, p_far = (r.p for r in result.rivals)
    assert p_close >= 0.05 > p_far and result.verdict == "within noise of b"
    assert result.lines()[-1] == (f"winner a: within noise of b (p {p_close:.2g}); ahead of c "
                                  f"(p {p_far:.2g}); confirmed where every rival's p < 0.05; "
                                  f"seed sd {result.noise:.4f}")
    ahead = confirm.compare([confirm.Seeded("a", "ra", {0: 1.0, 1: 1.01, 2: 1.02}), far])
    assert ahead.lines()[-1].startswith(f"winner a: confirmed: ahead of c (p {p_far:.2g}); "
                                        "confirmed where every rival's p < 0.05")


def test_two_seed_checks_at_once_train_each_seed_once(tmp_path, byte_dataset,
                                                      mlflow_store_template):
    """Two `tuner best --confirm` of one study at once trained and recorded the same seeds
    twice: the second waits for the first, then trains the seeds it lacks (none)."""
    study = log_study(tmp_path, "twice", byte_dataset, mlflow_store_template, trials=TRIALS[:1])
    command = [str(TUNER), "best", "--study", study.name, "--confirm", "1", "--seeds", "2",
               "--tracking-uri", study.uri]
    both = [subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    said = [proc.communicate(timeout=300)[0] for proc in both]
    assert [proc.returncode for proc in both] == [0, 0], said
    client = MlflowClient(tracking_uri=study.uri)
    made = confirm.confirmations(client, client.get_run(study.parent_id))
    assert sorted(run.data.tags["tuner.seed"] for run in made) == ["1", "2"]
    assert sum(out.count("confirming trial") for out in said) == 2


def test_seeds_without_confirm_is_refused(confirmed):
    """`--seeds` alone was ignored: no seed check ran and none was said to be missing."""
    study, _ = confirmed
    code, out = tuner("best", "--study", study.name, "--seeds", "5", "--tracking-uri", study.uri)
    assert code == 2 and "error: --seeds 5 needs --confirm K" in out, out
