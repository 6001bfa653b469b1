"""The cost of MLflow's system metrics in each trial's process: the quickstart study run with
`tracking.system_metrics_s` at `--interval` (on) and at 0 (off), in ABBA order per repeat.

    uv run python benchmarks/system_metrics.py [--space search_spaces/quickstart.yaml]
        [--interval 30] [--repeats 1] [--cost-only]

On the CPU a study's trials are the same in both arms (the same seed, the same samples and
ASHA stops), so each trial is paired with itself: the ratio on/off of its training seconds at
its last evaluation and of its tokens/s. Prints markdown tables for docs/benchmarks.md: the
monitor's own CPU time in a process of its own (independent of the machine's load), then the
mean ratio with a 95% t-interval over the trials, and the system-metric points logged per trial.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from mlflow import MlflowClient
from scipy import stats

TUNER = Path(sys.executable).with_name("tuner")
CPU = "system/cpu_utilization_percentage"


def study_trials(space: dict, interval_s: float, folder: Path) -> dict[str, dict[str, float]]:
    """Run the study with `interval_s`: per trial (its searched values) its training seconds at
    its last evaluation, mean tokens/s and system-metric points."""
    space = {**space, "name": "sysmetrics",
             "tracking": {**space.get("tracking", {}), "system_metrics_s": interval_s}}
    (folder / "space.yaml").write_text(yaml.safe_dump(space, allow_unicode=True))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    subprocess.run([str(TUNER), "search", "--space", "space.yaml", "--tracking-uri", uri,
                    "--storage", "ray"], cwd=folder, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sysmetrics").experiment_id
    trials = {}
    for run in client.search_runs([experiment], "tags.`tuner.role` = 'trial'"):
        speeds = [m.value for m in client.get_metric_history(run.info.run_id, "tokens_per_s")]
        trials[str(sorted(run.data.params.items()))] = {
            "seconds": run.data.metrics["elapsed_s"], "tokens_per_s": statistics.mean(speeds),
            "points": len(client.get_metric_history(run.info.run_id, CPU))}
    return trials


COST_RUN = """
import sys, time, types
from tuner.store.node_metrics import NodeMetrics
uri, interval_s, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
study = types.SimpleNamespace(name="cost", tracking=types.SimpleNamespace(uri=uri, experiment="cost"))
began = time.process_time()
metrics = NodeMetrics(study, "t0", interval_s).start()
time.sleep(seconds)
metrics.stop()
print(time.process_time() - began)
"""


def monitor_cpu(folder: Path, interval_s: float, seconds: float) -> tuple[float, int]:
    """CPU seconds a fresh process spends on a NodeMetrics of a trial run, `seconds` long at
    `interval_s` (its imports and store connection included), and the points it logged."""
    uri = f"sqlite:///{folder / 'cost.db'}"
    client = MlflowClient(uri)
    if client.get_experiment_by_name("cost") is None:
        client.create_experiment("cost")
    experiment = client.get_experiment_by_name("cost").experiment_id
    for run in client.search_runs([experiment]):
        client.delete_run(run.info.run_id)
    run = client.create_run(experiment, tags={"tuner.study": "cost", "tuner.role": "trial",
                                              "tuner.trial_id": "t0"}).info.run_id
    done = subprocess.run([sys.executable, "-c", COST_RUN, uri, str(interval_s), str(seconds)],
                          check=True, capture_output=True, text=True)
    return float(done.stdout.split()[-1]), len(client.get_metric_history(run, CPU))


def cost_table(seconds: float) -> None:
    """The monitor's own CPU time in two runs, one short with few samples, one `seconds` long at
    0.1 s: its start (mlflow's import, the store, the run), per sample, and as a share of one core
    at 30 s (the default interval)."""
    with tempfile.TemporaryDirectory(prefix="system-metrics-cost-") as folder:
        short, few = monitor_cpu(Path(folder), 1.0, 3.0)
        long, many = monitor_cpu(Path(folder), 0.1, seconds)
    per_sample = (long - short) / (many - few)
    print(f"| {short - few * per_sample:.2f} s | {many} in {seconds:g} s | "
          f"{per_sample * 1e3:.1f} ms | {per_sample / 30 * 100:.3f}% |")


def interval(ratios: list[float]) -> str:
    """The mean of `ratios` with its 95% t-interval."""
    mean = statistics.mean(ratios)
    half = stats.t.ppf(0.975, len(ratios) - 1) * statistics.stdev(ratios) / len(ratios) ** 0.5
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, default=Path("search_spaces/quickstart.yaml"))
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cost-only", action="store_true",
                        help="only the monitor's CPU time, not the studies")
    args = parser.parse_args()
    print("| start (CPU) | samples at 0.1 s | CPU per sample | share of a core at 30 s |")
    print("|---|---|---|---|")
    cost_table(seconds=20.0)
    if args.cost_only:
        return
    space = yaml.safe_load(args.space.read_text())
    seconds, speeds, points = [], [], []
    for _ in range(args.repeats):
        arms: dict[float, list[dict]] = {args.interval: [], 0.0: []}
        for interval_s in (0.0, args.interval, args.interval, 0.0):  # ABBA: drift cancels
            with tempfile.TemporaryDirectory(prefix="system-metrics-") as folder:
                arms[interval_s].append(study_trials(space, interval_s, Path(folder)))
        for on, off in zip(arms[args.interval], arms[0.0], strict=True):
            for trial in on.keys() & off.keys():
                seconds.append(on[trial]["seconds"] / off[trial]["seconds"])
                speeds.append(on[trial]["tokens_per_s"] / off[trial]["tokens_per_s"])
                points.append(on[trial]["points"])
    print("| interval | trials paired | training seconds on/off | tokens/s on/off | "
          "system-metric points per trial (mean, min–max) |")
    print("|---|---|---|---|---|")
    print(f"| {args.interval:g} s | {len(seconds)} | {interval(seconds)} | {interval(speeds)} | "
          f"{statistics.mean(points):.1f}, {min(points)}–{max(points)} |")


if __name__ == "__main__":
    main()
