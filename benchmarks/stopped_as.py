"""Stopped trials told to Optuna as PRUNED (now) or COMPLETE (Ray's way, before), on the table of
curves: the final best of each sampler + ASHA (grace 1/8, ×3) both ways, seed by seed, simulated
by benchmarks/search_sim.py with `build_searcher(stopped_as=...)`.

    uv run python benchmarks/stopped_as.py --samplers tpe,cmaes --seeds 30 --samples 64
    uv run python benchmarks/stopped_as.py --samplers gp --seeds 10 --samples 32 --startup 5
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import search_sim  # benchmarks/ on sys.path

from tuner.search.searchers import algorithms
from tuner.search.trial import curve_table
from tuner.space import load_study


def final_bests(base: dict, sampler: str, way: str, args: argparse.Namespace
                ) -> tuple[list[float], list[float]]:
    """Each seed's final best val_loss and tokens (in full trials) with stopped trials `way`."""
    search_sim.build_searcher = functools.partial(algorithms.build_searcher, stopped_as=way)
    table = curve_table.load(args.table)
    bests, tokens = [], []
    for seed in range(args.seeds):
        search = {"algorithm": sampler, "num_samples": args.samples, "max_concurrent": 4,
                  **({"startup_trials": args.startup} if args.startup else {})}
        full = load_study(search_sim.with_search(base, seed, **search)).full_trial_tokens()
        study = load_study(search_sim.with_search(
            base, seed, **search, scheduler="asha",
            asha={"grace_period": full // 8, "reduction_factor": 3}))
        run = search_sim.simulate(study, table, slots=4)
        bests.append(run.curve[-1][1])
        tokens.append(run.tokens / full)
    return bests, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", default="tpe,cmaes")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--startup", type=int, default=None)
    parser.add_argument("--table", type=Path, default=REPO / "benchmarks/curves/cosine.npz")
    args = parser.parse_args()
    base = yaml.safe_load((REPO / "benchmarks/curves/space.yaml").read_text())
    for sampler in args.samplers.split(","):
        found = {}
        for way in ("complete", "pruned"):
            started = time.process_time()
            found[way] = final_bests(base, sampler, way, args)
            bests, tokens = found[way]
            print(f"{sampler} {way}: final best median {np.median(bests):.4f} mean "
                  f"{np.mean(bests):.4f}; tokens {np.mean(tokens):.1f} full trials; "
                  f"{time.process_time() - started:.0f} CPU-s", flush=True)
        diff = np.array(found["pruned"][0]) - np.array(found["complete"][0])
        rng = np.random.default_rng(0)
        means = [rng.choice(diff, len(diff)).mean() for _ in range(2000)]
        print(f"{sampler} pruned − complete: mean {diff.mean():+.4f}, bootstrap 90% "
              f"[{np.percentile(means, 5):+.4f}, {np.percentile(means, 95):+.4f}]; pruned lower "
              f"in {(diff < 0).sum()} of {len(diff)}, equal in {(diff == 0).sum()}", flush=True)


if __name__ == "__main__":
    main()
