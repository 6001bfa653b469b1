"""benchmarks/rung_fidelity.py's measures: Spearman's ρ, ranks, what ASHA keeps, and the
learning-rate-annealing law's areas and fit."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from model.config import TrainConfig
from model.schedules import LRSchedule

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rung_fidelity.py"
_spec = importlib.util.spec_from_file_location("rung_fidelity", SCRIPT)
fidelity = sys.modules["rung_fidelity"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fidelity)  # a script, not a package module: loaded from its file


def test_spearman_and_ranks_put_a_diverged_trial_last() -> None:
    assert fidelity.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fidelity.spearman([4, 3, 2, 1], [10, 20, 30, 40]) == pytest.approx(-1.0)
    assert fidelity.spearman([1, math.nan, 2, 3], [1, 4, 2, 3]) == pytest.approx(1.0)
    assert fidelity.ranks([0.5, math.inf, 0.2, 0.5]) == [2, 4, 1, 2]


@pytest.mark.parametrize("trials, factor", [(20, 4), (16, 4), (16, 3), (10, 3), (7, 2)])
def test_kept_count_is_rays_asha_cutoff(trials: int, factor: float) -> None:
    """Ray stops a trial whose reward (−loss) is below the (1 − 1/rf) percentile of the rung's
    rewards (ray/tune/schedulers/async_hyperband.py, _Bracket.cutoff): it keeps 5 of 20 at rf 4,
    as the issue counted."""
    rewards = -np.linspace(0.5, 3.0, trials)
    cutoff = np.nanpercentile(rewards, (1 - 1 / factor) * 100)
    assert fidelity.kept_count(trials, factor) == sum(not reward < cutoff for reward in rewards)
    assert fidelity.kept_count(20, 4) == 5


def test_kept_of_top_counts_the_final_best_that_survive_a_rung() -> None:
    finals = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    rung = [8.0, 1.0, 7.0, 5.0, 3.0, 4.0, 2.0, 6.0]  # the final top four rank 8, 1, 7 and 5
    assert fidelity.kept_count(8, 2) == 4
    assert fidelity.kept_of_top(rung, finals, 2) == 1
    assert fidelity.kept_of_top(finals, finals, 2) == 4


def test_annealing_areas_count_the_drops_with_decaying_momentum() -> None:
    lrs = np.array([0.0, 0.5, 1.0, 1.0, 0.5, 0.5])  # a warmup's rise is no annealing
    s1, s2 = fidelity.annealing_areas(lrs, decay=0.5)
    assert s1.tolist() == [0.0, 0.5, 1.5, 2.5, 3.0, 3.5]
    assert s2.tolist() == pytest.approx([0, 0, 0, 0, 0.5, 0.75])


def test_the_annealing_law_fit_recovers_known_parameters() -> None:
    """A loss curve made by the law over a cosine schedule gives back its L0, A, α and C."""
    config = TrainConfig(data="x", total_iters=400, lr_max=0.01, warmup_iters=20)
    schedule = LRSchedule.from_config(config)
    s1, s2 = fidelity.annealing_areas(np.array([schedule.lr(t) for t in range(400)]))
    steps = np.arange(25, 401, 25) - 1
    truth = (1.5, 0.8, 0.6, 0.05)
    losses = fidelity.annealing_law((s1[steps], s2[steps]), *truth)
    assert fidelity.fit_annealing_law(s1[steps], s2[steps], losses) == pytest.approx(truth,
                                                                                     rel=1e-3)
    assert fidelity.fit_annealing_law(s1[:3], s2[:3], losses[:3]) is None  # too few points


@pytest.mark.slow
def test_the_benchmark_trains_scores_and_reports_a_tiny_study(tmp_path: Path,
                                                              byte_dataset: Path) -> None:
    """--tiny end to end: four short trials a seed, every evaluation kept, each score at each rung
    of the study's ASHA."""
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump({
        "data": {"path": str(byte_dataset)},
        "model": {"vocab_size": 256, "context_length": 32, "d_model": 32, "num_layers": 1,
                  "num_heads": 2, "d_ff": 64},
        "hparams": {"α_max": {"loguniform": [1e-3, 3e-2]}, "B": {"choice": [8, 16]}},
        "budget": {"tokens": 40960, "eval_windows": 8},
        "search": {"scheduler": "asha", "asha": {"reduction_factor": 2}},
        "resources": {"device": "cpu"}}, allow_unicode=True))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--space", str(space),
                           "--seeds", "3", "--workers", "1", "--schedule", "cosine",
                           "--work", str(tmp_path / "work")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = json.loads((tmp_path / "work" / "tiny-cosine-n4-e8-tiny-s3.json").read_text())
    assert len(trials) == 4 and all(len(t["losses"]) == 8 for t in trials)
    assert all(len(t["lrs"]) == t["steps"][-1] for t in trials)  # the schedule of every step
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 0.")]
    assert [row.split(" | ")[1] for row in rows] == list(fidelity.SCORES) * 5  # 3 + lm.yaml's 2
