"""The honest P5 on real training: the quickstart's model and search space over real text
(tests/fixtures/tinystories_2MiB.txt, BPE 2048), random search's expected best from a pool of fully
trained random configurations, and the shipped searcher + scheduler against the others.

    uv run python benchmarks/real_search_check.py [--pool 60] [--seeds 20] [--work DIR]
        [--results benchmarks/results/real_search_check.jsonl] [--until HH:MM] [--report]
        [--searchers random tpe]

1. The pool: `--pool` random configurations of the quickstart's space (uniform draws, as
   `algorithm: random` samples it), each trained to the end with its own training seed
   (1001, 1002, …) in this process, by benchmarks/curves/build.py's `train_run`.
2. The target: random search's expected best of the quickstart's 10 samples, the median over
   2,000 resamples (with replacement) of 10 pool members of their best val_loss; its budget the
   tokens of 10 full trials.
3. The studies: per seed s (search.seed and budget.seed), round-robin over the combinations,
   `tuner search` of the quickstart shape (2 at a time) with `study_budget: {full_trials: 10}` and
   num_samples 40 (an upper bound); its curve (the best val_loss against the tokens trained by all
   its trials so far) is rebuilt from MLflow as benchmarks/study_efficiency.py does.
4. P5: the tokens a study trained before its best val_loss first reached the target, as a share of
   random search's; per combination its median (IQR) [bootstrap 90% interval of the median] and the
   seeds that reached it, and the median final best; then each pair of combinations by seed.

Each finished pool member and study is appended to `--results` (JSON lines); a rerun skips what is
there and goes on. It starts nothing new after `--until` (UTC) or once WORK/stop exists.
`--report` prints the table from the results file and trains nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent / "curves")]

from search_efficiency import p5, quartiles

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
TEXT = REPO / "tests" / "fixtures" / "tinystories_2MiB.txt"
RESULTS = REPO / "benchmarks" / "results" / "real_search_check.jsonl"
VOCAB = 2048
SAMPLES = 10  # the quickstart's: random search's sample count and the study budget in full trials
UPPER = 40  # num_samples of a study: an upper bound, the budget ends it
POOL_SEEDS = 1001  # the first pool member's training seed
RESAMPLES = 2000
TENTH = {"scheduler": "asha", "asha": {"grace_period": 40960, "reduction_factor": 3}}  # "3/32"
EIGHTH = {"scheduler": "asha", "asha": {"grace_period": 51200, "reduction_factor": 3}}
COMBINATIONS = {  # label → the study's `search` overrides; the results file keys on the label
    "cmaes + asha 3/32 ×3": {"algorithm": "cmaes", **TENTH},
    "random + asha 1/8 ×3": {"algorithm": "random", **EIGHTH},
    "tpe + asha 3/32 ×3 (shipped)": {"algorithm": "tpe", **TENTH},
}


def read_results(path: Path) -> list[dict[str, Any]]:
    """The whole lines of the results file (a line cut short by a kill is left out)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line]


def append(path: Path, record: dict[str, Any]) -> None:
    """Add one record to the results file, dropping a torn last line first."""
    from build import append_run, drop_torn_line

    path.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_line(path)
    append_run(path, record)


def member_best(member: dict[str, Any]) -> float:
    """A pool member's best val_loss seen (inf when it diverged or logged none)."""
    losses = [v for v in member["val_loss"] if v is not None and math.isfinite(v)]
    return min(losses) if losses and member["status"] != "diverged" else math.inf


def resampled_bests(bests: list[float], samples: int = SAMPLES, draws: int = RESAMPLES
                    ) -> np.ndarray:
    """The best of `samples` pool members drawn with replacement, `draws` times (seeded)."""
    rng = np.random.default_rng(0)
    return rng.choice(np.array(bests, dtype=float), size=(draws, samples)).min(axis=1)


def target(bests: list[float], samples: int = SAMPLES) -> float:
    """Random search's expected best of `samples` trials: the median of the resampled bests."""
    return float(np.percentile(resampled_bests(bests, samples), 50, method="higher"))


def tokens_to_reach(curve: list[list[float]], goal: float) -> float:
    """Tokens trained before the best val_loss first reached `goal` (inf: never)."""
    return next((spent for spent, loss in curve if loss <= goal), math.inf)


def report(records: list[dict[str, Any]], full_tokens: int) -> str:
    """The markdown table from the results: per combination P5 and the final best's median."""
    pool = [r for r in records if r["kind"] == "pool"]
    if not pool:
        return "no pool members yet"
    bests = [member_best(m) for m in pool]
    goal, budget = target(bests), SAMPLES * full_tokens
    low, _, high = quartiles(list(resampled_bests(bests)))
    finite = sorted(b for b in bests if math.isfinite(b))
    cpu = np.median([m["cpu_s"] for m in pool])
    lines = [(f"Pool: {len(pool)} fully trained random configurations ({cpu:.0f} CPU-s each, "
              f"median; best val_loss: min {finite[0]:.4f}, median {np.median(finite):.4f}); "
              f"target (random search's expected best of {SAMPLES}): {goal:.4f} (IQR over "
              f"resamples {low:.4f}–{high:.4f}); its budget {budget:,} tokens."), "",
             ("| combination | seeds | P5: median (IQR) [90% interval] reached | final best "
              "(median) | samples (median) | wall (median) |"), "|---|---|---|---|---|---|"]
    studies = [r["combination"] for r in records if r["kind"] == "study"]
    for label in dict.fromkeys([*COMBINATIONS, *studies]):  # and any no longer run
        runs = [r for r in records if r["kind"] == "study" and r["combination"] == label]
        if not runs:
            lines.append(f"| {label} | 0 | | | | |")
            continue
        shares = [tokens_to_reach(r["curve"], goal) / budget for r in runs]
        final = quartiles([r["curve"][-1][1] for r in runs])[1]
        trials = quartiles([r["trials"] for r in runs])[1]
        wall = np.median([r["wall_s"] for r in runs])
        lines.append(f"| {label} | {len(runs)} | {p5(shares)} | {final:.4f} | {trials:.0f} "
                     f"| {wall:.0f} s |")
    return "\n".join([*lines, "", *paired(records, goal, budget)])


def paired(records: list[dict[str, Any]], goal: float, budget: int) -> list[str]:
    """Each pair of combinations over the seeds both ran: the seeds where the first reached the
    target with fewer tokens (a two-sided sign test over the untied ones), and the median
    difference of their final bests with its bootstrap 90% interval."""
    from scipy.stats import binomtest
    from search_efficiency import bootstrap

    by_label: dict[str, dict[int, list]] = {}
    for r in records:
        if r["kind"] == "study":
            by_label.setdefault(r["combination"], {})[r["seed"]] = r["curve"]
    lines = [("| paired by seed: A against B | seeds | A's P5 lower / higher / tied (sign test p) "
              "| A − B final best: median [90% interval] |"), "|---|---|---|---|"]
    labels = [label for label in COMBINATIONS if label in by_label]
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            seeds = sorted(by_label[a].keys() & by_label[b].keys())
            if not seeds:
                continue
            first = [tokens_to_reach(by_label[a][s], goal) / budget for s in seeds]
            second = [tokens_to_reach(by_label[b][s], goal) / budget for s in seeds]
            lower = sum(x < y for x, y in zip(first, second, strict=True))
            higher = sum(x > y for x, y in zip(first, second, strict=True))
            p = binomtest(lower, lower + higher).pvalue if lower + higher else 1.0
            gaps = [by_label[a][s][-1][1] - by_label[b][s][-1][1] for s in seeds]
            low, high = bootstrap(gaps)
            lines.append(f"| {a} against {b} | {len(seeds)} | {lower} / {higher} / "
                         f"{len(seeds) - lower - higher} (p {p:.3f}) | {np.median(gaps):+.4f} "
                         f"[{low:+.4f}, {high:+.4f}] |")
    return lines


def base_space(work: Path) -> Path:
    """The quickstart on the prepared text: WORK/base.yaml (the data prepared once in WORK)."""
    import subprocess

    data = work / "data"
    if not (data / "meta.json").exists():
        subprocess.run([str(Path(sys.executable).with_name("tuner")), "data", "prepare",
                        "--input", str(TEXT), "--vocab-size", str(VOCAB), "--out", str(data)],
                       check=True)
    space = yaml.safe_load(QUICKSTART.read_text())
    space["data"] = {"path": str(data)}
    space["model"]["vocab_size"] = VOCAB
    path = work / "base.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False, allow_unicode=True))
    return path


def random_params(study: Any, seed: int) -> dict[str, Any]:
    """One uniform draw of the study's searched parameters."""
    from tuner.search.trial.curve_table import from_unit, searched_space

    space = searched_space(study)
    u = np.random.default_rng(seed).random(len(space))
    return {name: from_unit(dist, u[i:i + 1])[0] for i, (name, dist) in enumerate(space.items())}


def train_pool(base: Path, work: Path, results: Path, size: int, deadline: float) -> bool:
    """Train the pool members the results file lacks; False once stopped early."""
    import build

    have = {r["member"] for r in read_results(results) if r["kind"] == "pool"}
    build._start_worker(str(base), str(work / "data"))
    for member in range(size):
        if member in have:
            continue
        if stopped(work, deadline):
            return False
        seed = POOL_SEEDS + member
        run = build.train_run((member, seed, random_params(build._worker["study"], seed)))
        append(results, {"kind": "pool", "member": member, **run})
        print(f"pool {member}: {run['status']}, best {member_best(run):.4f}, "
              f"{run['cpu_s']:.0f} CPU-s", file=sys.stderr, flush=True)
    return True


def run_studies(base: Path, work: Path, results: Path, seeds: int, deadline: float,
                searchers: list[str] | None = None) -> None:
    """Per seed, each combination's study the results file lacks, round-robin (`searchers`:
    only the combinations of those algorithms)."""
    from study_efficiency import measure, run_study

    done = {(r["combination"], r["seed"]) for r in read_results(results) if r["kind"] == "study"}
    space = yaml.safe_load(base.read_text())
    for seed in range(1, seeds + 1):
        space["budget"]["seed"] = seed
        seeded = work / f"base-s{seed}.yaml"
        seeded.write_text(yaml.safe_dump(space, sort_keys=False, allow_unicode=True))
        for index, (label, overrides) in enumerate(COMBINATIONS.items()):
            if (label, seed) in done or (searchers and overrides["algorithm"] not in searchers):
                continue
            if stopped(work, deadline):
                return
            name = f"c{index}-s{seed}-{int(time.time())}"
            wall = run_study(work, name, {**overrides, "seed": seed, "num_samples": UPPER,
                                          "study_budget": {"full_trials": SAMPLES}}, seeded)
            study = measure(work, name, wall, space["search"]["max_concurrent"])
            append(results, {"kind": "study", "combination": label, "seed": seed, "name": name,
                             "curve": study.curve, "trials": study.trials, "wall_s": wall,
                             "train_s": study.train_s})
            print(f"{label} seed {seed}: {study.trials} trials, best {study.curve[-1][1]:.4f}, "
                  f"{wall:.0f} s", file=sys.stderr, flush=True)


def stopped(work: Path, deadline: float) -> bool:
    """Whether to start nothing new: past `--until`, or WORK/stop exists."""
    return time.time() >= deadline or (work / "stop").exists()


def until(text: str | None) -> float:
    """`--until HH:MM` (UTC, its next occurrence: past midnight when the hour has gone today) as
    a Unix time; none: never."""
    if text is None:
        return math.inf
    hours, minutes = map(int, text.split(":"))
    now = datetime.now(UTC)
    at = now.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    return (at + timedelta(days=1) if at <= now else at).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "real_search_check")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--until", help="UTC HH:MM: start nothing new after it")
    parser.add_argument("--report", action="store_true", help="print the table, train nothing")
    parser.add_argument("--searchers", nargs="+", help="run only these algorithms' combinations")
    args = parser.parse_args()
    full_tokens = yaml.safe_load(QUICKSTART.read_text())["budget"]["tokens"]
    if not args.report:
        work = args.work.resolve()
        work.mkdir(parents=True, exist_ok=True)
        base, deadline = base_space(work), until(args.until)
        if train_pool(base, work, args.results, args.pool, deadline):
            run_studies(base, work, args.results, args.seeds, deadline, args.searchers)
    print(report(read_results(args.results), full_tokens))


if __name__ == "__main__":
    main()
