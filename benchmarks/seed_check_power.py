"""The seed check's verdict simulated on the table of learning curves: how often it confirms the
true winner (power) and how often a false one (error), Welch's two-sided test (the verdict before)
against the pooled one-sided test with Holm's correction (tuner.search.winners.verdict), at 2, 3
and 5 seeds a trial (a trial's own run is one: `--seeds` 1, 2, 4).

    uv run python benchmarks/seed_check_power.py [--table benchmarks/curves/cosine.npz]
                                                 [--checks 4000] [--seed 0]

The table holds two seeds a configuration, too few to draw from, so a seed's final val_loss is
simulated with the table's measured structure: the configuration's mean over the table's two
seeds (taken as its true mean), plus an offset shared by every configuration at that seed
(normal; its sd from the mean difference between the table's seed 0 and seed 1, a single draw of
it), plus a residual of its own (the table's own residuals, (d − mean d)/√2 of a random
configuration with a random sign: heavy-tailed as they are). Scenarios: `study`, 48
configurations drawn from the table and trained with seed 0, their 3 best by that seed
seed-checked (the true winner: the lowest true mean of the three; a false one: any other);
`tie`, 2 or 3 trials of one true mean (the least favourable case: a confirmation of any but the
first counts as false, as if the first were better by a hair); `lead`, 2 trials whose true means
differ by 0.5 to 4 seed sd (the sd of a seed's value, offset and residual together: what the
verdict prints). The shared offset makes the tests conservative (it cancels in a difference of
means, not in the variance), and its sd is a single draw's, so `tie` runs without it too. Rates
come with 95% Wilson intervals. Last, the pooling's check: how often Bartlett's and
Brown–Forsythe's tests reject equal variances across 3 trials, where they are equal and where
one trial's noise is 3 times the others'.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from tuner.search.trial.curve_table import load
from tuner.search.winners.verdict import ALPHA, Seeded, compare, welch

REPO = Path(__file__).resolve().parents[1]
SEEDS = (2, 3, 5)  # seeds a trial, its own run's among them
STUDY, TOP = 48, 3  # a simulated study's trials, and the best of them seed-checked
LEADS = (0.5, 1.0, 2.0, 4.0)  # in seed sd


class Noise:
    """The table's seed noise: a shared offset a seed, and the residuals of its configurations."""

    def __init__(self, final: np.ndarray, offset: bool = True) -> None:
        d = final[:, 0] - final[:, 1]
        self.offset_sd = abs(float(d.mean())) / math.sqrt(2) if offset else 0.0
        self.residuals = (d - d.mean()) / math.sqrt(2)
        self.residual_sd = float(self.residuals.std(ddof=1))
        self.seed_sd = math.hypot(self.offset_sd, self.residual_sd)

    def draw(self, rng: np.random.Generator, means: np.ndarray, seeds: int) -> np.ndarray:
        """Final val_losses, configurations × seeds."""
        offsets = rng.normal(0.0, self.offset_sd, seeds)
        picked = rng.choice(self.residuals, size=(len(means), seeds))
        signs = rng.choice([-1.0, 1.0], size=(len(means), seeds))
        return means[:, None] + offsets[None, :] + signs * picked


def verdicts(values: np.ndarray) -> tuple[int | None, int | None]:
    """The trial each test confirms (its row), or None: the pooled test, then Welch's."""
    trials = [Seeded(str(i), str(i), dict(enumerate(map(float, row))))
                  for i, row in enumerate(values)]
    pooled = compare(trials)
    mine = int(pooled.winner.trial_id) if pooled.verdict == "confirmed" else None
    ranked = sorted(trials, key=lambda t: t.mean)
    theirs = int(ranked[0].trial_id) if all(
        welch(list(ranked[0].losses.values()), list(r.losses.values()))[1] < ALPHA
        for r in ranked[1:]) else None
    return mine, theirs


def wilson(hits: int, n: int) -> str:
    """A rate and its 95% Wilson interval, in percent."""
    z, p = 1.96, hits / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{100 * p:.1f}% ({100 * max(0, mid - half):.1f}–{100 * min(1, mid + half):.1f})"


def simulate(rng: np.random.Generator, noise: Noise, means: np.ndarray, scenario: str,
             seeds: int, checks: int, lead: float = 0.0) -> dict[str, list[int]]:
    """Per test, [true confirmations, false ones] over `checks` seed checks."""
    counts = {"pooled": [0, 0], "welch": [0, 0]}
    for _ in range(checks):
        if scenario == "study":
            drawn = means[rng.choice(len(means), STUDY, replace=False)]
            own = noise.draw(rng, drawn, 1)[:, 0]
            top = drawn[np.argsort(own)[:TOP]]
            values = np.column_stack([own[np.argsort(own)[:TOP]],
                                      noise.draw(rng, top, seeds - 1)])
            best = int(np.argmin(top))
        else:
            k = 3 if scenario == "tie3" else 2
            top = np.zeros(k)
            top[1:] = lead * noise.seed_sd
            values = noise.draw(rng, top, seeds)
            best = 0
        for name, winner in zip(("pooled", "welch"), verdicts(values)):
            if winner is not None:
                counts[name][0 if winner == best else 1] += 1
    return counts


def spread_checks(rng: np.random.Generator, noise: Noise, seeds: int, scale: float,
                  checks: int) -> tuple[int, int]:
    """How often Bartlett's and Brown–Forsythe's tests reject equal variances across 3 trials,
    the last one's noise `scale` times the others'."""
    from scipy import stats

    bartlett = brown_forsythe = 0
    for _ in range(checks):
        values = noise.draw(rng, np.zeros(3), seeds)
        values[-1] *= scale
        bartlett += stats.bartlett(*values).pvalue < ALPHA
        brown_forsythe += stats.levene(*values, center="median").pvalue < ALPHA
    return bartlett, brown_forsythe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, default=REPO / "benchmarks/curves/cosine.npz")
    parser.add_argument("--checks", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = load(args.table)
    finite = np.isfinite(table.final).all(axis=1)
    noise, means = Noise(table.final[finite]), table.mean_final[finite]
    quiet = Noise(table.final[finite], offset=False)
    rng = np.random.default_rng(args.seed)
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("numpy", "scipy"))
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, Python "
          f"{platform.python_version()}, {versions}; {args.checks} checks a cell\n")
    print(f"seed noise of {args.table.name} ({int(finite.sum())} configurations): shared offset "
          f"sd {noise.offset_sd:.4f} (one draw), residual sd {noise.residual_sd:.4f}, a seed's "
          f"sd {noise.seed_sd:.4f}; residual excess kurtosis "
          f"{float(((noise.residuals / noise.residual_sd) ** 4).mean() - 3):.1f}\n")
    cells = [("study", "3 best of 48", 0.0, noise), ("tie2", "2 tied", 0.0, noise),
             ("tie3", "3 tied", 0.0, noise), ("tie2", "2 tied, no shared offset", 0.0, quiet),
             ("tie3", "3 tied, no shared offset", 0.0, quiet),
             *[("lead", f"2, lead {lead:g} sd", lead, noise) for lead in LEADS]]
    print("| trials checked | seeds | pooled: true winner | pooled: false winner "
          "| Welch: true winner | Welch: false winner |")
    print("|---|---|---|---|---|---|")
    n = args.checks
    for scenario, label, lead, drawn in cells:
        for seeds in SEEDS:
            c = simulate(rng, drawn, means, scenario, seeds, n, lead)
            print(f"| {label} | {seeds} | {wilson(c['pooled'][0], n)} | "
                  f"{wilson(c['pooled'][1], n)} | {wilson(c['welch'][0], n)} | "
                  f"{wilson(c['welch'][1], n)} |", flush=True)
    print(f"\n| 3 trials, seeds | sd ratio | Bartlett rejects (p < {ALPHA:g}) "
          "| Brown–Forsythe rejects |\n|---|---|---|---|")
    for seeds in SEEDS[1:]:
        for scale in (1.0, 3.0):
            bartlett, brown_forsythe = spread_checks(rng, noise, seeds, scale, n)
            print(f"| {seeds} | {scale:g} | {wilson(bartlett, n)} | {wilson(brown_forsythe, n)} |",
                  flush=True)


if __name__ == "__main__":
    main()
