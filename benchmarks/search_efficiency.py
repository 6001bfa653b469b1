"""Searchers and schedulers compared over many seeds on the surrogate of the table of curves
(benchmarks/curves/cosine_surrogate.npz, tuner.search.trial.surrogate) or on a table, by the
simulator (benchmarks/search_sim.py): the study's own Optuna samplers and Ray's schedulers,
without Ray or training.

    uv run python benchmarks/search_efficiency.py [--source benchmarks/curves/cosine_surrogate.npz]
        [--seeds 50] [--baselines 50] [--workers 2] [--settings lm quickstart]
        [--samplers random cmaes tpe ...] [--schedulers none "asha 1/8 ×3" ...] [--clock cpu]
        [--results FILE] [--slow] [--space FILE] [--weighted-by SURROGATE (with a table)]
        [--start-near N ...] [--earlier-share 0.25]

For each setting (lm.yaml's 64 samples 4 at a time, the quickstart's 10 samples 2 at a time, a
study file's with nothing in `search:`: 16 samples, as many at once as 2 CPUs allow, or 8 for
"default-8"; its scheduler "asha default", the schema's ASHA):
the target is random search's expected final best, the median over `--baselines` independent
random searches of the setting's sample count (seeds 1001, 1002, …) of their final best
val_loss. Each searcher × scheduler runs at seeds 1 … N (the searcher's seed and the training
seed: its own noise draw), with the token budget of those random searches (samples × a full
trial) and as many samples as it can use within it: no trial starts once the tokens trained
reach it, and each running trial goes on to its next stopping point (ASHA's next rung, or its
end) and stops, as `search: {study_budget: {full_trials: N}}` does. It prints markdown:
- P5: the tokens it trained before its recommendation (the trial `tuner best` would pick so
  far) had a noise-free final val_loss at or below the random searches' median one, as a share
  of the random searches' tokens (median, IQR, the seeds that reached it, a bootstrap 90%
  interval of the median over seeds; "n.r.": not reached, counted as infinite); noise-free, so
  that a study's own draw of the seed noise (its shared offset above all) neither helps nor
  hurts it; "P5 seen" the same on the best val_loss seen, against the random searches' median
  final best seen; and P5 in time (the
  simulated clock, `--clock cpu`: the table's CPU seconds a run at each B; `tokens`: flat in B,
  as on a GPU), as a share of the random searches' median time;
- regret (median [bootstrap 90% interval of the median]): the recommended configuration's (the
  best trial's, as `tuner best` picks it) noise-free mean final val_loss minus the surrogate's
  true optimum (its noise-free minimum over a dense sample), in seed sd; on a table, its mean
  over the two seeds minus the table's best;
- trust: the share of seeds whose regret ≤ 1; samples: trials started (median);
then the CPU seconds a comparison of one combination takes, by searcher.

With `--start-near N`, each combination also runs warm-started (`search.warm_start`) from an
earlier study of the same model at a shorter budget, its first N trials near that study's best
(`search.start_near`, through the study's own searcher: tuner.search.searchers.prior_start),
as "SEARCHER near N" (N 0: the warm start's trials alone). The earlier study is a random search
of the setting's samples without a scheduler at its own seed (3000 + the seed: its own noise
draw), each trial told its val_loss at a quarter of the budget (`--earlier-share`): mid-schedule,
a proxy of a study at a quarter of the budget that never sees a final val_loss. Its tokens are
not counted.
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
SOURCE = REPO / "benchmarks" / "curves" / "cosine_surrogate.npz"
SPACE = REPO / "benchmarks" / "curves" / "space.yaml"
SETTINGS = {"lm": (64, 4), "quickstart": (10, 2), "default": (16, 2),  # num_samples, at once
            "default-8": (16, 8)}
UNSET = {"default", "default-8"}  # a study file that sets nothing in search: (the schema's 16
# samples, no max_concurrent): as many at once as the resources allow, a CPU each: 2 or 8 CPUs
BASELINE_SEEDS = 1001  # the first independent random search's seed
EARLIER_SEEDS = 3000  # + the seed: the earlier study a warm-started one starts from
UPPER = 12  # num_samples, in the setting's samples: an upper bound; the budget ends a study
SAMPLERS = {"random": {"algorithm": "random"}, "qmc": {"algorithm": "qmc"},
            "cmaes": {"algorithm": "cmaes"}, "tpe": {"algorithm": "tpe"},
            "bohb": {"algorithm": "bohb"}, "bohb/4": {"algorithm": "bohb", "startup_trials": 4},
            "tpe/5": {"algorithm": "tpe", "startup_trials": 5},
            "tpe/20": {"algorithm": "tpe", "startup_trials": 20},
            "gp": {"algorithm": "gp"}, "gp/5": {"algorithm": "gp", "startup_trials": 5}}
SLOW = {"gp", "gp/5"}  # seconds a suggestion at 64 samples: left out unless asked for there
FEW = ("none", "asha 1/8 ×3", "asha 1/16 ×4", "asha 3/32 ×3")  # the schedulers of gp and of other start-ups
FLAT = {"trials": 16, "margin": "noise"}  # where a study has more samples than that
QUICKSTART_ONLY = {"asha 3/32 ×3", "asha 3/32 ×4"}  # the quickstart's own grace period


def schedulers(budget: int) -> dict[str, dict[str, Any]]:
    """The schedulers compared, by label: fractions of the budget as ASHA's grace period."""
    found: dict[str, dict[str, Any]] = {"none": {"scheduler": "none"},
                                        "asha default": {"scheduler": "asha", "asha": None}}
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


def load_source(path: Path, weights: Path | None = None) -> Any:
    """The surrogate or the table at `path` (UserError naming it when it is neither); a table's
    nearest rows of the same B by distances weighted with the length scales of the surrogate
    `weights` when given."""
    from search_sim import TableAnswers

    from tuner.search.trial import curve_table, surrogate

    if surrogate.is_surrogate(path):
        return surrogate.load(path)
    table = curve_table.load(path)
    return table if weights is None else TableAnswers(table, surrogate.load(weights).length_scales)


def _start_worker(source: str, space: str, clock: str, weights: str | None,
                  earlier_share: float) -> None:
    import torch

    torch.set_num_threads(1)  # GP's; the other worker has the other core
    _worker["source"] = load_source(Path(source), weights and Path(weights))
    _worker["base"] = yaml.safe_load(Path(space).read_text())
    _worker["clock"] = clock
    _worker["earlier_share"] = earlier_share


def simulate_one(task: tuple) -> dict[str, Any]:
    """One simulated study: its key, seed, the evaluations where its best improved (tokens
    trained by then, the clock's time, the best), its tokens, trials, its recommendation's
    noise-free final and CPU seconds."""
    from search_sim import earlier_trials, simulate, with_search

    from tuner.space import load_study

    setting, sampler, scheduler, search, seed, slots, budget = task
    started = time.process_time()
    study, warm = load_study(with_search(_worker["base"], seed, **search)), None
    if study.search.warm_start:
        earlier = load_study(with_search(
            _worker["base"], EARLIER_SEEDS + seed, **SAMPLERS["random"], scheduler="none",
            num_samples=SETTINGS[setting][0], max_concurrent=slots))
        warm = earlier_trials(earlier, study, _worker["source"], slots,
                              _worker["earlier_share"])
    run = simulate(study, _worker["source"], slots=slots, budget=budget, clock=_worker["clock"],
                   warm_trials=warm)
    better = [i for i, (_, best) in enumerate(run.curve) if i == 0 or best < run.curve[i - 1][1]]
    wiser = [i for i, truth in enumerate(run.truths) if i == 0 or truth < run.truths[i - 1]]
    return {"key": [setting, sampler, scheduler], "seed": seed,
            "spent": [run.curve[i][0] for i in better], "time": [run.times[i] for i in better],
            "best": [run.curve[i][1] for i in better],
            "truth": {"spent": [run.curve[i][0] for i in wiser],
                      "time": [run.times[i] for i in wiser],
                      "best": [run.truths[i] for i in wiser]},
            "tokens": run.tokens,
            "end": run.times[-1], "trials": len(run.trials),
            "true_final": run.best.true_final if run.best else math.inf,
            "cpu_s": time.process_time() - started}


def study_seeds(count: int, table: Any) -> list[int]:
    """The first `count` seeds but the table's Sobol seed: qmc's Sobol sequence with that seed
    is the table's own, and would sample its configurations exactly."""
    skip = getattr(table, "table", table).meta.get("sobol", {}).get("seed", 0)
    return [seed for seed in range(count + 1) if seed != skip][:count]


def tasks(args: argparse.Namespace, budget: int) -> list[tuple]:
    """Every (setting, searcher, scheduler, search settings, seed, slots, token budget) to
    simulate: the independent random searches first, then seed by seed (a run stopped early
    holds whole seeds)."""
    combinations, baselines = [], []
    for setting in args.settings:
        samples, concurrency = SETTINGS[setting]
        limit = None if setting in UNSET else concurrency
        baselines += [(setting, "baseline", "none", {
            **SAMPLERS["random"], "scheduler": "none", "num_samples": samples,
            "max_concurrent": limit}, BASELINE_SEEDS + i, concurrency, None)
            for i in range(args.baselines)]
        whole = set()  # the algorithms whose first searcher here had every scheduler
        for sampler in args.samplers:
            algorithm = SAMPLERS[sampler]["algorithm"]
            if sampler in SLOW and setting == "lm" and not args.slow:
                continue
            few = algorithm in whole or algorithm == "gp"
            whole.add(algorithm)
            for label, settings in schedulers(budget).items():
                if label not in args.schedulers:
                    continue
                if few and label not in FEW:
                    continue
                if "stop_when_flat" in settings and samples <= FLAT["trials"]:
                    continue
                if label in QUICKSTART_ONLY and setting != "quickstart":
                    continue
                search = {**SAMPLERS[sampler], "num_samples": UPPER * samples,
                          "max_concurrent": limit, **settings}
                combinations.append((setting, sampler, label, search))
                combinations += [(setting, f"{sampler} near {n}", label, {
                    **search, "warm_start": "earlier", "start_near": n or None})
                    for n in args.start_near]
    return baselines + [(*combination, seed, SETTINGS[combination[0]][1],
                         SETTINGS[combination[0]][0] * budget)
                        for seed in args.seed_list for combination in combinations]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """The 25th, 50th and 75th percentiles as order statistics (numpy's 'higher': of 50 seeds,
    the median is the 26th), so that inf counts as the largest."""
    ordered = np.sort(np.array(values, dtype=float))
    return tuple(float(np.percentile(ordered, q, method="higher")) for q in (25, 50, 75))


def percent(value: float) -> str:
    return f"{value:.0%}" if math.isfinite(value) else "n.r."


def bootstrap(values: list[float], draws: int = 2000) -> tuple[float, float]:
    """A 90% bootstrap interval of the median (as `quartiles` takes it) over seeds."""
    rng = np.random.default_rng(0)
    data = np.array(values, dtype=float)
    medians = np.sort([np.percentile(rng.choice(data, len(data)), 50, method="higher")
                       for _ in range(draws)])
    return float(medians[int(0.05 * draws)]), float(medians[int(0.95 * draws) - 1])


def shares(runs: list[dict], target: float, tokens: float, seconds: float
           ) -> tuple[list[float], list[float]]:
    """Each seed's tokens and time before its `best` reached `target`, as shares of `tokens`
    and `seconds` (inf: never)."""
    by_tokens, by_time = [], []
    for run in runs:
        hit = np.flatnonzero(np.asarray(run["best"]) <= target)
        by_tokens.append(run["spent"][hit[0]] / tokens if hit.size else math.inf)
        by_time.append(run["time"][hit[0]] / seconds if hit.size else math.inf)
    return by_tokens, by_time


def p5(values: list[float]) -> str:
    """P5's median (IQR) [90% interval] and the seeds that reached the target."""
    low, mid, high = quartiles(values)
    lo, hi = bootstrap(values)
    return (f"{percent(mid)} ({percent(low)}–{percent(high)}) [{percent(lo)}–{percent(hi)}] "
            f"{sum(map(math.isfinite, values))}")


def cell(runs: dict[int, dict], targets: tuple[float, float], tokens: float, seconds: float,
         optimum: float, sd: float) -> str:
    """One combination's figures over its seeds: P5 in tokens and in time on the
    recommendation's noise-free final, regret median [90% interval], trust, samples median, and
    P5 in tokens on the best val_loss seen (`targets`: the noise-free one, the seen one)."""
    by_tokens, by_time = shares([run["truth"] for run in runs.values()], targets[0], tokens,
                                seconds)
    seen, _ = shares(list(runs.values()), targets[1], tokens, seconds)
    regret = [(run["true_final"] - optimum) / sd for run in runs.values()]
    trusted = sum(r <= 1 for r in regret) / len(regret)
    samples = quartiles([run["trials"] for run in runs.values()])[1]
    low, high = bootstrap(regret)
    return (f"{p5(by_tokens)} | {p5(by_time)} | {quartiles(regret)[1]:.2f} [{low:.2f}–{high:.2f}] "
            f"| {trusted:.0%} | {samples:.0f} | {p5(seen)}")


def truth(source: Any) -> tuple[float, float]:
    """The problem's optimum and seed sd: the surrogate's noise-free minimum and its seed
    noise; a table's best mean final and pooled seed sd."""
    if hasattr(source, "optimum"):
        return source.optimum, source.seed_sd
    table = getattr(source, "table", source)  # TableAnswers'
    return float(np.min(table.mean_final)), table.pooled_seed_sd


def report(results: list[dict[str, Any]], order: list[tuple], source: Any, budget: int,
           seeds: int) -> list[str]:
    """The markdown tables, one per setting (a row per combination, in the order of `order`'s
    keys), and the simulator's speed."""
    runs: dict[tuple, dict[int, dict]] = {key: {} for key in dict.fromkeys(order)}
    for r in results:
        runs[tuple(r["key"])][r["seed"]] = r
    optimum, sd = truth(source)
    lines = []
    for setting in dict.fromkeys(key[0] for key in runs):
        samples, concurrency = SETTINGS[setting]
        baseline = runs[(setting, "baseline", "none")]
        aim = quartiles([b["true_final"] for b in baseline.values()])[1]
        seen = quartiles([b["best"][-1] for b in baseline.values()])[1]
        seconds = quartiles([b["end"] for b in baseline.values()])[1]
        unset = " (max_concurrent unset)" if setting in UNSET else ""
        lines += ["", (f"**{setting}**: {samples} samples' tokens ({samples} full trials), "
                       f"{concurrency} at a time{unset}. Target: random search's expected final "
                       f"recommendation, noise-free {aim:.4f} (regret {(aim - optimum) / sd:.2f}"
                       f"), seen {seen:.4f}: the medians of {len(baseline)} independent random "
                       f"searches (true optimum {optimum:.4f}, seed sd {sd:.4f}). P5: median "
                       "(IQR) [bootstrap 90%] seeds reached."),
                  "", ("| searcher | scheduler | P5 tokens | P5 time | regret | trust | samples "
                       "| P5 seen |"), "|---|---|---|---|---|---|---|---|"]
        for key, by_seed in runs.items():
            if key[0] == setting and key[1] != "baseline":
                lines.append(f"| {key[1]} | {key[2]} | " + cell(
                    by_seed, (aim, seen), samples * budget, seconds, optimum, sd) + " |")
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
    parser.add_argument("--source", type=Path, default=SOURCE,
                        help="a surrogate (default) or a table of curves")
    parser.add_argument("--weighted-by", type=Path, metavar="SURROGATE",
                        help="with a table: its nearest row of the same B, distances divided by "
                             "this surrogate's length scales")
    parser.add_argument("--space", type=Path, default=SPACE,
                        help="the study the source stands for")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--baselines", type=int, default=50,
                        help="independent random searches that set the target")
    parser.add_argument("--clock", choices=("cpu", "tokens"), default="cpu",
                        help="time: the table's CPU seconds a run at each B, or flat in B")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=["lm", "quickstart"],
                        choices=list(SETTINGS))
    parser.add_argument("--samplers", nargs="+", default=["random", "cmaes", "tpe", "gp/5"],
                        choices=list(SAMPLERS))
    parser.add_argument("--schedulers", nargs="+", default=None,
                        help="labels as printed (default: none, asha 1/8 ×3)")
    parser.add_argument("--results", type=Path, metavar="FILE",
                        help="append each study's figures to FILE (JSON lines), and take those "
                             "it holds already: a stopped run goes on")
    parser.add_argument("--start-near", nargs="+", type=int, default=[], metavar="N",
                        help="each combination also warm-started from an earlier random "
                             "search told its val_loss at --earlier-share of the budget, its "
                             "first N trials near its best (0: the warm start alone)")
    parser.add_argument("--earlier-share", type=float, default=0.25, metavar="SHARE",
                        help="with --start-near: the share of the budget at which the earlier "
                             "study's trials are told their val_loss (1: a study of this budget)")
    parser.add_argument("--slow", action="store_true",
                        help="gp at lm.yaml's 64 samples too (seconds a suggestion)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))  # search_sim, in the workers too
    from tuner.errors import UserError

    try:
        source = load_source(args.source, args.weighted_by)
    except UserError as err:
        sys.exit(f"error: {err}")
    budget = int(source.tokens[-1])
    args.schedulers = args.schedulers or ["none", "asha 1/8 ×3"]
    args.seed_list = study_seeds(args.seeds, source)
    planned = tasks(args, budget)
    before = kept(args.results)
    results = [before[(*t[:3], t[4])] for t in planned if (*t[:3], t[4]) in before]
    todo = [t for t in planned if (*t[:3], t[4]) not in before]
    started = time.monotonic()
    setup = (str(args.source), str(args.space), args.clock,
             args.weighted_by and str(args.weighted_by), args.earlier_share)
    if len(todo) and args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers, _start_worker,
                                                       setup) as pool:
            results += collect(pool.imap(simulate_one, todo, chunksize=4), len(todo),
                               args.results)
    elif len(todo):  # in this process: no worker to start
        _start_worker(*setup)
        results += collect(map(simulate_one, todo), len(todo), args.results)
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("ray", "optuna", "numpy"))
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, {versions}; {args.source.name}, clock "
          f"{args.clock}; {args.seeds} seeds, {args.baselines} random searches; {len(todo)} "
          f"studies in {time.monotonic() - started:.0f} s wall on {args.workers} workers "
          f"({len(results) - len(todo)} read from --results)")
    print("\n".join(report(results, [task[:3] for task in planned], source, budget,
                            args.seeds)))


if __name__ == "__main__":
    main()
