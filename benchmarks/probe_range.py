"""`tuner probe`'s α_max range against studies: the quickstart as shipped and with the probe's
range written in (`--write`), each with the searcher seeds given, and the probe of any other
study files (their best α is read from `--compare` studies already recorded).

    uv run python benchmarks/probe_range.py --out DIR [--seeds 0 1 2] [--probe FILE ...]
    uv run python benchmarks/probe_range.py --out DIR --read   # the table again, nothing run

Records to DIR/mlflow.db and prints, per study: the trials by outcome (diverged, stopped at the
first rung, at a later one, completed), the best trial's α_max and B, the tokens trained, and
the probe's range and tokens, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TUNER = Path(sys.executable).with_name("tuner")
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"


def tuner(args: list[str], cwd: Path) -> str:
    """Run `tuner ARGS`, print its wall time and last line; its output (exit 0 or 1 only)."""
    start = time.perf_counter()
    done = subprocess.run([str(TUNER), *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        sys.exit(f"tuner {' '.join(args)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    print(f"{time.perf_counter() - start:6.1f} s  tuner {' '.join(args[:3])}: "
          f"{lines[-1] if lines else ''}", flush=True)
    return done.stdout


def run(out: Path, seeds: list[int], probes: list[Path]) -> None:
    uri = f"sqlite:///{out / 'mlflow.db'}"
    probed = out / "quickstart-probed.yaml"
    shutil.copy(QUICKSTART, out / "quickstart.yaml")
    shutil.copy(QUICKSTART, probed)
    tuner(["probe", "--space", str(probed), "--write", "--tracking-uri", uri,
           "--out", str(out / "probe-quickstart")], out)
    for path in probes:
        tuner(["probe", "--space", str(path), "--tracking-uri", uri,
               "--out", str(out / f"probe-{path.stem}")], REPO)
    for seed in seeds:
        for name in ("quickstart", "quickstart-probed"):
            tuner(["search", "--space", str(out / f"{name}.yaml"), "--name", f"{name}-s{seed}",
                   "--seed", str(seed), "--tracking-uri", uri, "--storage", str(out / "ray")], out)


def read(out: Path) -> None:
    """Print each study's outcomes and best, and each probe's range, from DIR/mlflow.db."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    for probe in client.search_runs(experiments, "tags.`tuner.role` = 'probe'"):
        p = probe.data.params
        print(f"probe {probe.data.tags['tuner.study']}: [{p['lr_max_lo']}, {p['lr_max_hi']}] at "
              f"B {p['batch_size']}, d_model {p['d_model']}; {p['tokens']} tokens, "
              f"{p['steps_run']} steps")
    print("| study | trials | diverged | stopped at rung 0 | later rungs | completed | median "
          "val_loss at the first evaluation | best α_max (B) | best val_loss | tokens trained |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for parent in client.search_runs(experiments, "tags.`tuner.role` = 'study'",
                                     order_by=["attributes.start_time ASC"]):
        trials = client.search_runs([parent.info.experiment_id],
                                    f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        status = [t.data.tags.get("tuner.status", "") for t in trials]
        detail = [t.data.tags.get("tuner.status_detail", "") for t in trials]
        first = sum("rung 0" in d for d in detail)
        best = client.get_run(parent.data.tags["tuner.best_run_id"])
        first_eval = statistics.median(
            min(client.get_metric_history(t.info.run_id, "val_loss"), key=lambda m: m.step).value
            for t in trials)
        print(f"| {parent.data.tags['tuner.study']} | {len(trials)} | {status.count('diverged')} "
              f"| {first} | {status.count('stopped') - first} | {status.count('completed')} | "
              f"{first_eval:.3f} | "
              f"{float(best.data.params['lr_max']):.4g} ({best.data.params['batch_size']}) | "
              f"{best.data.metrics['best_val_loss']:.4f} | "
              f"{int(parent.data.metrics['study/tokens_trained']):,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--probe", type=Path, nargs="*", default=[],
                        help="other study files to probe (paths from the repository root)")
    parser.add_argument("--read", action="store_true", help="only print the table")
    args = parser.parse_args()
    args.out = args.out.resolve()
    if not args.read:
        args.out.mkdir(parents=True, exist_ok=True)
        run(args.out, args.seeds, args.probe)
    read(args.out)


if __name__ == "__main__":
    main()
