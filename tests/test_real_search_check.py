"""benchmarks/real_search_check.py's report on a made-up results file: the target and P5."""

from __future__ import annotations

import json
import math
from pathlib import Path

from curve_tables import BENCHMARKS, load_script

check = load_script(BENCHMARKS / "real_search_check.py", "real_search_check")


def pool(bests: list[float]) -> list[dict]:
    return [{"kind": "pool", "member": i, "status": "completed", "val_loss": [best + 1, best],
             "cpu_s": 20.0}
            for i, best in enumerate(bests)]


def test_target_is_the_median_best_of_ten_resampled_members() -> None:
    """One member of 20 at 1.0 is missed by 10 draws 60% of the time: the median best is 2.0;
    with two of 20 missed 35% of the time: 1.0. A diverged member counts as inf."""
    assert check.target([1.0] + [2.0] * 19) == 2.0
    assert check.target([1.0] * 2 + [2.0] * 18) == 1.0
    assert check.member_best({"status": "diverged", "val_loss": [5.0, math.inf]}) == math.inf


def test_report_gives_p5_as_a_share_of_ten_full_trials(tmp_path: Path) -> None:
    """Studies that reach the target 2.0 after 2,000 and 4,000 tokens and one that never does,
    against random search's 10 full trials of 1,000 tokens: P5 20%, 40%, n.r.: median and lower quartile 40% (of three, the second)."""
    label = next(iter(check.COMBINATIONS))
    studies = [{"kind": "study", "combination": label, "seed": seed, "trials": 12,
                "wall_s": 300.0,
                "curve": [[100, 3.0], [reach, 1.9], [9000, final]]}
               for seed, reach, final in ((1, 2000, 1.5), (2, 4000, 1.8), (3, 5000, 2.5))]
    studies[2]["curve"][1][1] = 2.6
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pool([2.0] * 20) + studies))
    table = check.report(check.read_results(path), full_tokens=1000)
    row = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    assert row.split(" | ")[1:4] == ["3", "40% (40%–n.r.) [20%–n.r.] 2", "1.8000"]
    assert "target (random search's expected best of 10): 2.0000 (IQR" in table


def test_paired_counts_each_seed_once_and_differences_the_final_bests() -> None:
    """Two combinations at seeds 1–3 against the target 2.0: the first reaches it sooner at seed 1,
    later at seed 2, and neither at seed 3 (a tie); its final bests are 0.1 lower at every seed."""
    first, second = list(check.COMBINATIONS)[:2]
    reach = {(first, 1): 1000, (second, 1): 3000, (first, 2): 5000, (second, 2): 2000}
    studies = [{"kind": "study", "combination": label, "seed": seed,
                "curve": [[reach.get((label, seed), 100), 1.9 if (label, seed) in reach else 2.5],
                          [9000, (1.5 if label == first else 1.6) + seed]]}
               for label in (first, second) for seed in (1, 2, 3)]
    lines = check.paired(studies, goal=2.0, budget=10_000)
    row = next(line for line in lines if line.startswith(f"| {first} against {second} |"))
    assert row.split(" | ")[1:] == ["3", "1 / 1 / 1 (p 1.000)", "-0.1000 [-0.1000, -0.1000] |"]
