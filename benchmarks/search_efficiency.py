"""Searchers and schedulers compared over many seeds on the table of learning curves
(benchmarks/curves/cosine.npz), by the simulator (benchmarks/search_sim.py): the study's own
Optuna samplers and Ray's schedulers, without Ray or training.

    uv run python benchmarks/search_efficiency.py [--table benchmarks/curves/cosine.npz]
        [--seeds 50] [--workers 2] [--settings lm quickstart] [--samplers tpe random ...]
        [--schedulers none "asha 1/16 ×4" ...] [--results FILE] [--slow] [--space FILE]

For each setting (lm.yaml's 64 samples 4 at a time, the quickstart's 10 samples 2 at a time),
each searcher × scheduler runs with N seeds (the searcher's seed and the training seed, which
picks the table's seed; 1 … N, the table's own Sobol seed left out), against random search
without a scheduler at the same seed (gp, and the start-up counts after a searcher's first, with
no scheduler and the ASHA settings in FEW only), and prints markdown, medians over the seeds:
- P5: the tokens it trained before its best val_loss reached random search's final best, as a
  share of random search's tokens (interquartile range; "n.r.": not reached, counted as
  infinite);
- regret: the recommended configuration's (the best trial's, as `tuner best` picks it) mean final
  val_loss over the table's two seeds, minus the table's best mean, in the table's pooled seed sd;
- trust: the share of seeds whose recommendation is within one seed sd of the table's best mean;
- tokens: what all its trials trained, in full trials;
then the CPU seconds a 50-seed comparison of one combination takes, by searcher.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "benchmarks" / "curves" / "cosine.npz"
SPACE = REPO / "benchmarks" / "curves" / "space.yaml"
SETTINGS = {"lm": (64, 4), "quickstart": (10, 2)}  # num_samples, max_concurrent
SAMPLERS = {"random": {"algorithm": "random"}, "qmc": {"algorithm": "qmc"},
            "cmaes": {"algorithm": "cmaes"}, "tpe": {"algorithm": "tpe"},
            "tpe/5": {"algorithm": "tpe", "startup_trials": 5},
            "tpe/20": {"algorithm": "tpe", "startup_trials": 20},
            "gp": {"algorithm": "gp"}, "gp/5": {"algorithm": "gp", "startup_trials": 5}}
OPTUNA_STARTUP = 10  # TPESampler's and GPSampler's n_startup_trials when none is given
SLOW = {"gp", "gp/5"}  # seconds a suggestion at 64 samples: left out unless asked for there
FEW = ("none", "asha 1/16 ×4", "asha 3/32 ×3")  # the schedulers of gp and of other start-ups
FLAT = {"trials": 16, "margin": "noise"}  # where a study has more samples than that
QUICKSTART_ONLY = {"asha 3/32 ×3", "asha 3/32 ×4"}  # the quickstart's own grace period


def schedulers(budget: int) -> dict[str, dict[str, Any]]:
    """The schedulers compared, by label: fractions of the budget as ASHA's grace period."""
    found: dict[str, dict[str, Any]] = {"none": {"scheduler": "none"}}
    for share in (16, 8, 4):
        for factor in (3, 4):
            found[f"asha 1/{share} ×{factor}"] = {
                "scheduler": "asha", "asha": {"grace_period": budget // share,
                                              "reduction_factor": factor}}
    for factor in (3, 4):  # the quickstart's grace period (a tenth) on the table's points
        found[f"asha 3/32 ×{factor}"] = {"scheduler": "asha", "asha": {
            "grace_period": 3 * budget // 32, "reduction_factor": factor}}
    found["hyperband ×4"] = {"scheduler": "hyperband", "max_concurrent": None,
                             "asha": {"grace_period": budget // 16, "reduction_factor": 4}}
    found["median"] = {"scheduler": "median"}
    for share, grace in (("1/8", budget // 8), ("3/32", 3 * budget // 32)):  # lm's, quickstart's
        found[f"pasha {share} ×3"] = {"scheduler": "pasha", "asha": {"grace_period": grace,
                                                                     "reduction_factor": 3}}
    for k in (2, 4, 8):  # the one-epoch top-K baseline, at an eighth of the budget
        found[f"topk 1/8 k{k}"] = {"scheduler": "topk", "topk": {"budget": budget // 8, "k": k}}
    found["asha 1/16 ×4 + flat"] = {**found["asha 1/16 ×4"], "stop_when_flat": FLAT}
    return found


_worker: dict[str, Any] = {}


def _start_worker(table: str, space: str) -> None:
    import torch

    from tuner.search.trial import curve_table

    torch.set_num_threads(1)  # GP's; the other worker has the other core
    _worker["table"] = curve_table.load(table)
    _worker["base"] = yaml.safe_load(Path(space).read_text())


def simulate_one(task: tuple[str, str, str, dict[str, Any], int, int]) -> dict[str, Any]:
    """One simulated study: its key, seed, the points where its best improved (tokens trained
    by then, the best), its tokens, recommended row and CPU seconds."""
    from search_sim import simulate, with_search

    from tuner.space import load_study

    setting, sampler, scheduler, search, seed, slots = task
    started = time.process_time()
    run = simulate(load_study(with_search(_worker["base"], seed, **search)), _worker["table"],
                   slots=slots)
    better = [(spent, best) for i, (spent, best) in enumerate(run.curve)
              if i == 0 or best < run.curve[i - 1][1]]
    return {"key": [setting, sampler, scheduler], "seed": seed,
            "spent": [spent for spent, _ in better], "best": [best for _, best in better],
            "tokens": run.tokens, "row": run.best.row if run.best else -1,
            "cpu_s": time.process_time() - started}


def study_seeds(count: int, table: Any) -> list[int]:
    """The first `count` seeds but the table's Sobol seed: qmc's Sobol sequence with that seed
    is the table's own, and would sample its configurations exactly."""
    skip = table.meta.get("sobol", {}).get("seed")
    return [seed for seed in range(count + 1) if seed != skip][:count]


def tasks(args: argparse.Namespace, budget: int) -> list[tuple]:
    """Every (setting, searcher, scheduler, search settings, seed, slots) to simulate, seed by
    seed (a run stopped early holds whole seeds), random search first."""
    combinations = []
    for setting in args.settings:
        samples, concurrency = SETTINGS[setting]
        whole = set()  # the algorithms whose first searcher here had every scheduler
        for sampler in ["random", *(s for s in args.samplers if s != "random")]:
            algorithm = SAMPLERS[sampler]["algorithm"]
            if sampler in SLOW and setting == "lm" and not args.slow:
                continue
            if SAMPLERS[sampler].get("startup_trials", OPTUNA_STARTUP) >= samples and (
                    algorithm in ("tpe", "gp")):
                continue  # random search: all its samples are start-up ones
            few = algorithm in whole or algorithm == "gp"
            whole.add(algorithm)
            for label, settings in schedulers(budget).items():
                if label not in args.schedulers and not (sampler == "random" and label == "none"):
                    continue
                if few and label not in FEW:
                    continue
                if "stop_when_flat" in settings and samples <= FLAT["trials"]:
                    continue
                if label in QUICKSTART_ONLY and setting != "quickstart":
                    continue
                search = {**SAMPLERS[sampler], "num_samples": samples,
                          "max_concurrent": concurrency, **settings}
                combinations.append((setting, sampler, label, search))
    return [(*combination, seed, SETTINGS[combination[0]][1]) for seed in args.seed_list
            for combination in combinations]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """The 25th, 50th and 75th percentiles as order statistics (numpy's 'higher': of 50 seeds,
    the median is the 26th), so that inf counts as the largest."""
    ordered = np.sort(np.array(values, dtype=float))
    return tuple(float(np.percentile(ordered, q, method="higher")) for q in (25, 50, 75))


def percent(value: float) -> str:
    return f"{value:.0%}" if math.isfinite(value) else "n.r."


def cell(by_seed: dict[int, dict], baseline: dict[int, dict], table: Any, budget: int) -> str:
    """One combination's figures over its seeds: P5 median (IQR), seeds that reached random
    search's best, regret median, trust, tokens median."""
    best_mean, sd = float(np.min(table.mean_final)), table.pooled_seed_sd
    p5, regret = [], []
    for seed, run in by_seed.items():
        if seed not in baseline:
            continue
        target, spent = baseline[seed]["best"][-1], baseline[seed]["tokens"]
        hit = np.flatnonzero(np.asarray(run["best"]) <= target)
        p5.append(run["spent"][hit[0]] / spent if hit.size else math.inf)
        mean = float(table.mean_final[run["row"]]) if run["row"] >= 0 else math.inf
        regret.append((mean - best_mean) / sd)
    low, mid, high = quartiles(p5)
    trusted = sum(r <= 1 for r in regret) / len(regret)
    tokens = quartiles([run["tokens"] / budget for run in by_seed.values()])[1]
    return (f"{percent(mid)} ({percent(low)}–{percent(high)}) {sum(map(math.isfinite, p5))} · "
            f"{quartiles(regret)[1]:.2f} · {trusted:.0%} · {tokens:.1f}")


def report(results: list[dict[str, Any]], order: list[tuple], table: Any, budget: int,
           seeds: int) -> list[str]:
    """The markdown tables, one per setting (a row per scheduler, a column per searcher, in the
    order of `order`'s keys), and the simulator's speed."""
    runs: dict[tuple, dict[int, dict]] = {key: {} for key in dict.fromkeys(order)}
    for r in results:
        runs[tuple(r["key"])][r["seed"]] = r
    lines = []
    for setting in dict.fromkeys(key[0] for key in runs):
        samples, concurrency = SETTINGS[setting]
        keys = [key for key in runs if key[0] == setting]
        searchers, labels = dict.fromkeys(k[1] for k in keys), dict.fromkeys(k[2] for k in keys)
        baseline = runs[(setting, "random", "none")]
        full = quartiles([b["tokens"] / budget for b in baseline.values()])[1]
        lines += ["", (f"**{setting}**: {samples} samples, {concurrency} at a time, {len(baseline)} "
                  f"seeds (random search: {full:.0f} full trials). Each cell: P5 median (IQR) "
                  "and the seeds that reached random search's best · regret median (seed sd) "
                  "· trust · tokens (full trials)"),
                  "", "| scheduler | " + " | ".join(searchers) + " |",
                  "|---|" + "---|" * len(searchers)]
        for label in labels:
            lines.append(f"| {label} | " + " | ".join(
                cell(runs[(setting, name, label)], baseline, table, budget)
                if (setting, name, label) in runs else "" for name in searchers) + " |")
    cpu = defaultdict(list)
    for r in results:
        cpu[r["key"][1]].append(r["cpu_s"])
    speed = ", ".join(f"{name} {np.mean(values) * seeds:.0f} s" for name, values in cpu.items())
    return [*lines, "", (f"CPU seconds per {seeds}-seed comparison of one combination (one "
            f"process, the mean over its schedulers and settings): {speed}")]


def collect(done: Iterable[dict[str, Any]], total: int, keep: Path | None
            ) -> list[dict[str, Any]]:
    """The simulated studies as they finish, each appended to `keep` (JSON lines), their count
    said every 250."""
    started, results = time.monotonic(), []
    for i, result in enumerate(done, 1):
        results.append(result)
        if keep is not None:
            with open(keep, "a") as out:
                out.write(json.dumps(result) + "\n")
        if i % 250 == 0 or i == total:
            print(f"{i}/{total} studies, {time.monotonic() - started:.0f} s", file=sys.stderr,
                  flush=True)
    return results


def kept(path: Path | None) -> dict[tuple, dict[str, Any]]:
    """The studies an earlier run appended to `path`, by (setting, searcher, scheduler, seed);
    a line cut short by a kill is left out."""
    found: dict[tuple, dict[str, Any]] = {}
    if path is None or not path.exists():
        return found
    for line in path.read_text().splitlines():
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        found[(*result["key"], result["seed"])] = result
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--space", type=Path, default=SPACE, help="the study the table stands for")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--schedulers", nargs="+", default=None,
                        help="labels as printed (default: all)")
    parser.add_argument("--results", type=Path, metavar="FILE",
                        help="append each study's figures to FILE (JSON lines), and take those "
                             "it holds already: a stopped run goes on")
    parser.add_argument("--slow", action="store_true",
                        help="gp at lm.yaml's 64 samples too (seconds a suggestion)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))  # search_sim, in the workers too
    from tuner.errors import UserError
    from tuner.search.trial import curve_table

    try:
        table = curve_table.load(args.table)
    except UserError as err:
        sys.exit(f"error: {err}")
    budget = int(table.tokens[-1])
    args.schedulers = args.schedulers or list(schedulers(budget))
    args.seed_list = study_seeds(args.seeds, table)
    planned = tasks(args, budget)
    before = kept(args.results)
    results = [before[(*t[:3], t[4])] for t in planned if (*t[:3], t[4]) in before]
    todo = [t for t in planned if (*t[:3], t[4]) not in before]
    started = time.monotonic()
    if len(todo) and args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(
                args.workers, _start_worker, (str(args.table), str(args.space))) as pool:
            results += collect(pool.imap(simulate_one, todo, chunksize=4), len(todo),
                               args.results)
    elif len(todo):  # in this process: no worker to start
        _start_worker(str(args.table), str(args.space))
        results += collect(map(simulate_one, todo), len(todo), args.results)
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("ray", "optuna", "numpy"))
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, {versions}; table {args.table.name}: "
          f"{len(table.params)} configurations (sha256 {table.sha256[:12]}), best mean "
          f"{np.min(table.mean_final):.4f}, pooled seed sd {table.pooled_seed_sd:.4f}; "
          f"{args.seeds} seeds, {len(todo)} studies in {time.monotonic() - started:.0f} s "
          f"wall on {args.workers} workers ({len(results) - len(todo)} read from --results)")
    print("\n".join(report(results, [task[:3] for task in planned], table, budget,
                            args.seeds)))


if __name__ == "__main__":
    main()
