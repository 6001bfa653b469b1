"""A stop's cost: how long `tuner search` takes to exit after SIGUSR1 (Slurm's notice), and how
much of each running trial's work since its last evaluation a resume keeps, with the trials'
grace (`search.stop_grace_s`, default 30) and without it (0).

    uv run python benchmarks/stop_notice.py [--space search_spaces/quickstart.yaml]
        [--after 15] [--repeats 3]

Each run starts the study afresh in a temporary folder, signals the driver `--after` seconds
after Tune made the study's folder, and reads Tune's saved state: per running trial, the step
its newest checkpoint holds against its last evaluation. Prints a markdown table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from model.checkpoint import read_checkpoint

TUNER = Path(sys.executable).with_name("tuner")


def stopped_run(space: dict, grace_s: float, after_s: float, folder: Path) -> tuple[float, list]:
    """Run the study with `grace_s`, SIGUSR1 after `after_s`: the seconds to exit, and per trial
    that was running (tokens since its last evaluation that its checkpoint keeps, tokens it had
    trained since then by the signal, estimated from its speed)."""
    space = {**space, "name": "stopped", "search": {**space["search"], "stop_grace_s": grace_s}}
    (folder / "space.yaml").write_text(yaml.safe_dump(space, allow_unicode=True))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    driver = subprocess.Popen([str(TUNER), "search", "--space", "space.yaml", "--tracking-uri",
                               f"sqlite:///{folder / 'mlflow.db'}", "--storage", "ray"],
                              cwd=folder, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    study = folder / "ray" / "stopped"
    while not study.exists():  # the dataset is prepared and Ray started first
        if driver.poll() is not None:
            raise SystemExit(f"the study ended before the signal (exit {driver.returncode})")
        time.sleep(0.1)
    time.sleep(after_s)
    signalled = time.time()
    driver.send_signal(signal.SIGUSR1)
    driver.wait(timeout=300)
    exit_s = time.time() - signalled
    state = json.loads(max(study.glob("experiment_state-*.json")).read_text())
    trials = []
    for trial, runtime in state["trial_data"]:
        trial, runtime = json.loads(trial), json.loads(runtime)
        last = runtime["last_result"]
        if trial["status"] in ("TERMINATED", "ERROR") or "val_loss" not in last:
            continue  # ended before the signal, or not evaluated yet
        checkpoint = study / f"trial_{trial['trial_id']}" / last["checkpoint_dir_name"]
        step = int(read_checkpoint(checkpoint, mmap=True)["iteration"])
        kept = step * last["tokens"] // last["step"] - last["tokens"]
        noticed = "stop_checkpoint_step" in last  # it checkpointed within 0.2 s of the signal
        trained = kept if noticed else \
            last["tokens_per_s"] * (signalled - runtime["last_result_time"])
        trials.append((kept, trained))
    return exit_s, trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, default=Path("search_spaces/quickstart.yaml"))
    parser.add_argument("--after", type=float, default=15.0,
                        help="seconds from the study's start to the signal")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    space = yaml.safe_load(args.space.read_text())
    print("| stop_grace_s | exit after the signal (median) | trials running | tokens since the "
          "last evaluation at the signal (mean) | of which the resume keeps (mean) |")
    print("|---|---|---|---|---|")
    for grace_s in (30.0, 0.0):
        exits, trials = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="stop-notice-") as folder:
                exit_s, running = stopped_run(space, grace_s, args.after, Path(folder))
            exits.append(exit_s)
            trials += running
        kept = statistics.mean(k for k, _ in trials) if trials else float("nan")
        trained = statistics.mean(t for _, t in trials) if trials else float("nan")
        print(f"| {grace_s:g} | {statistics.median(exits):.1f} s | {len(trials)} | "
              f"{trained:,.0f} | {kept:,.0f} |")


if __name__ == "__main__":
    main()
