"""Seed-checked winners (`tuner best --confirm`), on a real recorded study without Ray."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from inspect_study import SPACE, TRIALS, log_study, tuner
from mlflow import MlflowClient
from studies import ENV, TUNER

from tuner.inspect.report import read_findings
from tuner.search.run.runner import summarise
from tuner.search.winners import seed_check as confirm
from tuner.search.winners import verdict
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


def test_each_trial_has_its_mean_sd_and_the_winner_a_test(confirmed, tmp_path):
    study, out = confirmed
    client = MlflowClient(tracking_uri=study.uri)
    result = confirm.recorded(client, client.get_run(study.parent_id))
    assert [len(t.losses) for t in result.trials] == [2, 2]  # its own run and a confirmation
    assert result.winner.mean <= result.trials[1].mean and result.winner.sd > 0
    rival = result.rivals[0]
    assert 0 < rival.p <= 1 and rival.lead >= 0
    assert result.verdict in ("confirmed", f"within noise of {rival.trial_id}")
    shown = f"{rival.trial_id} ({verdict.shown_sd(rival.lead_sd)} sd, p {rival.p:.2g})"
    judged = f"within noise of {shown}" if not rival.significant else f"confirmed: ahead of {shown}"
    assert f"winner {result.winner.trial_id}: {judged}\n" in out
    assert (f"test: one-sided t at the pooled seed sd, {result.noise:.4f} (2 degrees of freedom), "
            "Holm-corrected over 1 rival; confirmed where every rival's p < 0.05") in out
    assert f"val_loss {result.winner.mean:.4f} ± {result.winner.sd:.4f} over 2 seeds" in out
    parent = client.get_run(study.parent_id)
    assert parent.data.tags["tuner.confirmation"] == f"{result.winner.trial_id} {result.verdict}"
    record = json.loads(Path(client.download_artifacts(study.parent_id, "seed_check.json",
                                                       str(tmp_path))).read_text())
    assert record == json.loads(json.dumps(result.record()))
    assert record["rivals"][0]["welch_two_sided"] == {"t": rival.welch_t, "p": rival.welch_p}


def test_a_second_confirm_trains_nothing_and_best_shows_the_result(confirmed):
    study, _ = confirmed
    code, out = tuner("best", "--study", study.name, "--confirm", "2", "--seeds", "1",
                      "--tracking-uri", study.uri)
    assert code == 0 and "confirming trial" not in out and "every rival's p < 0.05" in out
    code, out = tuner("best", "--study", study.name, "--tracking-uri", study.uri)
    assert code == 0 and "every rival's p < 0.05" in out
    shown = [line for line in out.splitlines() if line.startswith("  winner ")]
    # the best alone: the runner-up, seed-checked before, is compared too (one verdict for all)
    code, out = tuner("best", "--study", study.name, "--confirm", "1", "--seeds", "1",
                      "--tracking-uri", study.uri)
    client = MlflowClient(tracking_uri=study.uri)
    checked = confirm.recorded(client, client.get_run(study.parent_id))
    assert code == 0 and f"also compared, seed-checked before: {checked.trials[1].trial_id}" in out
    assert [line for line in out.splitlines() if line.startswith("  winner ")] == shown


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
    test = checked.rivals[0]
    assert top[rival.run_id].seed_check.verdict.endswith(
        f"the winner {winner.trial_id} (lead {verdict.shown_sd(test.lead_sd)} seed sd, "
        f"p {test.p:.2g})")
    assert sum(t.seed_check is None for t in top.values()) == 1  # the stopped trial
    best = api.best(study.name, tracking_uri=study.uri)
    assert best.seed_check == top[best.run_id].seed_check


def test_welch_matches_the_textbook_and_takes_noiseless_seeds():
    t, p = verdict.welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0])
    # means 2 and 5.5, variances 1 and 5/3: t = -3.5 / √(1/3 + 5/12), about 4.96 degrees of freedom
    assert t == pytest.approx(-3.5 / math.sqrt(0.75)) and p == pytest.approx(0.0101, abs=5e-4)
    assert verdict.welch([1.0, 1.0], [2.0, 2.0]) == (-math.inf, 0.0)
    seeded = [verdict.Seeded("a", "ra", {0: 1.0, 1: 1.1}), verdict.Seeded("b", "rb", {0: 1.0,
                                                                                   1: 1.2})]
    assert verdict.compare(seeded).verdict == "within noise of b"
    noiseless = verdict.compare([verdict.Seeded("a", "ra", {0: 1.0, 1: 1.0}),
                                 verdict.Seeded("b", "rb", {0: 2.0, 1: 2.0})])
    assert noiseless.verdict == "confirmed" and noiseless.rivals[0].p == 0.0


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
    close = verdict.Seeded("b", "rb", {0: 1.01, 1: 1.0, 2: 1.03})
    far = verdict.Seeded("c", "rc", {0: 2.0, 1: 2.01, 2: 2.02})
    result = verdict.compare([verdict.Seeded("a", "ra", {0: 1.0, 1: 1.01, 2: 1.02}), close, far])
    (p_close, sd_close), (p_far, sd_far) = ((r.p, r.lead_sd) for r in result.rivals)
    assert p_close >= 0.05 > p_far and result.verdict == "within noise of b"
    assert result.lines()[-3:-1] == [
        (f"winner a: within noise of b ({verdict.shown_sd(sd_close)} sd, p {p_close:.2g}); "
         "ahead of c "
        f"({verdict.shown_sd(sd_far)} sd, p {p_far:.2g})"),
        (f"test: one-sided t at the pooled seed sd, {result.noise:.4f} (6 degrees of freedom), "
        "Holm-corrected over 2 rivals; confirmed where every rival's p < 0.05")]
    ahead = verdict.compare([verdict.Seeded("a", "ra", {0: 1.0, 1: 1.01, 2: 1.02}), far])
    only = ahead.rivals[0]
    assert ahead.lines()[-3] == (f"winner a: confirmed: ahead of c "
                                 f"({verdict.shown_sd(only.lead_sd)} sd, p {only.p:.2g})")
    assert "confirmed where every rival's p < 0.05" in ahead.lines()[-2]


def test_the_issues_example_is_confirmed_at_the_pooled_seed_sd():
    """`tuner best --confirm 2 --seeds 1` printed "within noise" (Welch p 0.074) for a lead of
    5.8 seed sd at 2 seeds a side: the pooled sd has 2 degrees of freedom, not about 1.2."""
    result = verdict.compare([verdict.Seeded("97119b9a", "r2", {0: 0.3977, 1: 0.3921}),
                              verdict.Seeded("6af7a389", "r1", {0: 0.3784, 1: 0.3764})])
    rival, = result.rivals
    assert result.winner.trial_id == "6af7a389" and result.verdict == "confirmed"
    # pooled variance (0.0014142² + 0.0039598²) / 2: sd 0.0029732; t = 0.0175 / 0.0029732
    assert result.noise == pytest.approx(0.0029732, abs=1e-7) and result.pooled.df == 2
    assert rival.t == pytest.approx(5.8859, abs=1e-3) and rival.p == pytest.approx(0.01384,
                                                                                   abs=1e-4)
    assert rival.welch_p == pytest.approx(0.0731, abs=1e-3)  # Welch's two-sided, kept
    assert result.record()["rivals"][0]["welch_two_sided"]["p"] == rival.welch_p
    lines = result.lines()
    assert lines[1] == ("97119b9a: val_loss 0.3949 ± 0.0040 over 2 seeds (0.3977, 0.3921); "
                        "lead +0.0175 = 5.9 seed sd, p 0.014")
    assert lines[2] == "winner 6af7a389: confirmed: ahead of 97119b9a (5.9 sd, p 0.014)"
    # t(2) one-sided 5% = 2.920: the least lead 2 seeds a side confirm is 2.92 × 0.0029732
    assert lines[4] == ("by how much: the lead over 97119b9a, 0.0175, is 2.0× the least these "
                        "seeds confirm (0.0087)")


def test_a_lead_of_half_a_seed_sd_stays_within_noise_and_names_the_seeds_it_needs():
    sd = 0.003  # each trial's two seeds 2 sd apart: the pooled sd is √2 sd
    winner = verdict.Seeded("a", "ra", {0: 1.0, 1: 1.0 + 2 * sd})
    rival = verdict.Seeded("b", "rb", {0: 1.0 + 0.5 * math.sqrt(2) * sd,
                                       1: 1.0 + (2 + 0.5 * math.sqrt(2)) * sd})
    result = verdict.compare([winner, rival])
    assert result.rivals[0].lead_sd == pytest.approx(0.5) and result.verdict == "within noise of b"
    needed = verdict.seeds_needed(result.rivals[0].lead, result.noise, 2)
    # a normal approximation: n = 2 (z_0.05 + z_0.2)² / 0.5² = 49.5; the t's tails add a seed
    assert needed in (50, 51)
    assert result.lines()[-1] == (f"to confirm a lead of 0.5 seed sd over b: {needed} seeds a "
                                  f"trial (--seeds {needed - 1}) for an 80% chance, if the lead "
                                  "and the pooled sd hold")
    assert verdict.seeds_needed(0.01 * sd, sd, 2) is None
    tiny = verdict.compare([winner, verdict.Seeded("b", "rb", {0: 1.0 + 0.01 * sd,
                                                               1: 1.0 + 2.01 * sd})])
    assert tiny.lines()[-1].endswith("would take more than 101 seeds a trial to confirm: call it "
                                     "a tie")


def test_holm_corrects_across_the_rivals():
    assert verdict.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert verdict.holm([0.04]) == [0.04]
    # t 2.97 against each rival: alone p 0.049 (2 df), together 0.029 each (3 df), Holm 0.059
    a = verdict.Seeded("a", "ra", {0: 0.0, 1: 0.2})
    rivals = [verdict.Seeded(n, f"r{n}", {0: 0.42, 1: 0.62}) for n in "bc"]
    alone = verdict.compare([a, rivals[0]])
    both = verdict.compare([a, *rivals])
    assert alone.verdict == "confirmed" and alone.rivals[0].p == pytest.approx(0.0487, abs=1e-3)
    assert [r.p for r in both.rivals] == pytest.approx([0.059, 0.059], abs=1e-3)
    assert both.verdict == "within noise of b, c"


def test_seed_variances_that_differ_are_not_pooled_and_the_output_says_so():
    """With ≥ 3 seeds a trial, Bartlett's test of equal variances: a trial far noisier than the
    others fails it, and Welch's one-sided test decides instead."""
    steady = [verdict.Seeded(n, f"r{n}", {s: base + 0.001 * s for s in range(5)})
              for n, base in (("a", 1.0), ("b", 1.01))]
    wild = verdict.Seeded("c", "rc", {0: 1.3, 1: 0.9, 2: 1.4, 3: 0.8, 4: 1.2})
    result = verdict.compare([*steady, wild])
    assert result.pooled.spread_p is not None and not result.pooled.holds
    assert result.lines()[0] == (f"the seed variances differ across the trials (Bartlett p "
                                 f"{result.pooled.spread_p:.2g}): Welch's test decides, not the "
                                 "pooled one")
    b = result.rivals[0]
    assert b.df == pytest.approx(8.0) and b.t == pytest.approx(10.0)  # se √(2 · 2.5e-6 / 5)
    assert result.verdict == "within noise of c"  # ahead of b by Welch's t, not of c
    assert verdict.compare(steady).pooled.holds


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


# A seed check that dies as `kill -9` or the out-of-memory killer would end it: after its first
# evaluation is logged, with its confirmation run RUNNING
DIES_MID_SEED = """
import os, signal, sys
from tuner.search.winners import retrain
logged = retrain.log_metrics
def log_then_die(*args, **kwargs):
    logged(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
retrain.log_metrics = log_then_die
import tuner
tuner.confirm(sys.argv[1], top=1, seeds=1, tracking_uri=sys.argv[2])
"""


def test_a_seed_check_that_takes_over_ends_the_dead_ones_run(tmp_path, byte_dataset,
                                                              mlflow_store_template):
    """A SIGKILLed `--confirm` left its seed run RUNNING for good: the next seed check of the
    study on the machine (the lock free, so its process is dead) ends it KILLED, as a stop ends
    a run (it was killed, not failed by its config), and trains that seed again."""
    import tuner as api

    study = log_study(tmp_path, "killed", byte_dataset, mlflow_store_template, trials=TRIALS[:1])
    proc = subprocess.run([sys.executable, "-c", DIES_MID_SEED, study.name, study.uri],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    client = MlflowClient(tracking_uri=study.uri)
    parent = client.get_run(study.parent_id)
    dead, = runs.study_runs(client, parent, CONFIRMATION)
    assert dead.info.status == "RUNNING" and dead.data.metrics  # it trained, then died
    seen = []
    api.confirm(study.name, top=1, seeds=1, tracking_uri=study.uri, progress=seen.append)
    assert client.get_run(dead.info.run_id).info.status == "KILLED"
    assert seen[0] == (f"ended seed run {dead.info.run_name} as KILLED: the seed check that "
                       "trained it died; its seed trains again")
    again, = confirm.confirmations(client, parent)
    assert again.info.run_id != dead.info.run_id and again.data.tags["tuner.seed"] == "1"
