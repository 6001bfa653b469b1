"""What a study draws from its GPU, against one trial alone: one command, on data it makes itself.

    python3 benchmarks/gpu_study.py [--work DIR] [--json FILE]        # a GPU, at most 8 minutes
    uv run python benchmarks/gpu_study.py --tiny [--compile true]     # the same code on the CPU

It writes random tokens (vocab 10000; --tiny: 512) as a dataset folder, then:
1. the baseline: one trial alone at B=128 (--tiny: 32), in a process of its own, compiled as
   the study's `resources.compile` says (`auto`: on a GPU, not on the CPU): tokens/s of its steps
   after the first evaluation (compilation falls before it), and MFU;
2. a study of search_spaces/lm.yaml as shipped (its model, batch-size mix, TPE + ASHA, 4 trials
   per GPU, compile and checkpoint defaults) on that data, with its budget, evaluations and ASHA
   rungs cut alike to fit (--tiny: the quickstart's model, 2 trials on 2 cores);
3. from the trials' Tune results: the study's aggregate tokens/s and its ratio to the baseline,
   the share of slot time (trials' span × concurrency) in training steps, each trial's start-up
   and compile seconds by how it started (a new actor or a reused one; a shape new to the
   machine, in the compile caches on disk, or the actor's own), the checkpoint seconds on the
   training thread, the disk checkpoints wrote per trial, and MFU.

torch's compile caches start empty in the work folder: the baseline compiles its shape cold.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from random_tokens import random_dataset


REPO = Path(__file__).resolve().parents[1]
LM_YAML = REPO / "search_spaces" / "lm.yaml"
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
GPU = {"vocab": 10000, "baseline_batch": 128, "tokens": 40_960_000, "samples": 16,
       "baseline_steps": 600, "valid_tokens": 2_000_000, "train_tokens": 200_000_000}
TINY = {"vocab": 512, "baseline_batch": 32, "tokens": 409_600, "samples": 8,
        "baseline_steps": 120, "valid_tokens": 50_000, "train_tokens": 2_000_000}


def repo_env() -> dict[str, str]:
    """This environment with the repository importable (a GPU machine runs it uninstalled)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def study_file(work: Path, data: Path, tiny: bool, sizes: dict[str, Any],
               compile: str | None = None) -> Path:
    """lm.yaml as shipped on `data`, its budget, evaluations and rungs cut by one factor (--tiny:
    the quickstart's model and resources, lm.yaml's search); `compile` as given, else as shipped."""
    space = yaml.safe_load(LM_YAML.read_text())
    cut = space["budget"]["tokens"] / sizes["tokens"]
    space.update(name="gpu-study", data={"path": str(data)})
    space["budget"].update(tokens=sizes["tokens"], eval_tokens=int(space["budget"]["eval_tokens"]
                                                                   / cut))
    asha = space["search"]["asha"]
    asha["grace_period"] = int(asha["grace_period"] / cut)
    space["search"]["num_samples"] = sizes["samples"]
    if space["search"]["algorithm"] in ("tpe", "gp"):  # random start-up trials (not bohb's rule)
        space["search"]["startup_trials"] = sizes["samples"] // 2
    space["tracking"] = {"uri": f"sqlite:///{work / 'mlflow.db'}", "log_checkpoints": "none"}
    if tiny:
        quick = yaml.safe_load(QUICKSTART.read_text())
        space["model"] = {**quick["model"], "vocab_size": sizes["vocab"]}
        space["hparams"]["B"] = {"choice": [8, 16, 32, 64]}
        space["resources"] = quick["resources"]
        space["search"]["max_concurrent"] = quick["search"]["max_concurrent"]
    if compile is not None:
        space["resources"]["compile"] = yaml.safe_load(compile)  # auto, true or false
    path = work / "gpu_study.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False, allow_unicode=True))
    return path


def baseline(space: Path, batch: int, steps: int) -> dict[str, Any]:
    """One trial of the study's model alone (this script again, in a process of its own)."""
    out = subprocess.run([sys.executable, __file__, "--baseline-of", str(space), "--batch",
                          str(batch), "--steps", str(steps)], capture_output=True, text=True,
                         env=repo_env())
    if out.returncode != 0:
        sys.exit(f"the baseline failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_baseline(space: Path, batch: int, steps: int) -> dict[str, Any]:
    """Train the study's fixed values at `batch` for `steps` steps; its speed after compiling."""
    import optuna
    import torch

    from model.compiled import compile_seconds
    from model.train import resolve_device, train
    from tuner.space.loader import load_study

    study = load_study(space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    drawn = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    config = replace(study.trial_config(study.sample(drawn), study.data.path), batch_size=batch,
                     total_iters=steps, total_tokens=None, eval_tokens=None,
                     eval_interval=steps // 4, warmup_iters=steps // 20)

    torch.set_num_threads(int(study.resources.cpus_per_trial))
    start = time.perf_counter()
    records = train(config).records
    steady = records[1:]  # the first interval holds the compilation
    return {"tokens_per_s": statistics.mean(r.tokens_per_s for r in steady),
            "mfu": statistics.mean(r.mfu for r in steady), "compile_s": compile_seconds(),
            "wall_s": time.perf_counter() - start, "batch": batch,
            "device": str(resolve_device(config.device)),
            "compiled": compile_seconds() > 0}


def run_study(space: Path, work: Path) -> float:
    """`tuner search` on the study file; the command's wall seconds."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tuner", "search", "--space", str(space),
                           "--storage", str(work / "ray")], cwd=work, capture_output=True,
                          text=True, env={**repo_env(), "XDG_CACHE_HOME": str(work / "cache"),
                                          "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"})  # result.json
    if proc.returncode != 0:
        sys.exit(f"the study failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                 f"{proc.stderr[-3000:]}")
    return time.monotonic() - start


def trial_results(storage: Path) -> list[list[dict[str, Any]]]:
    """Each trial's Tune results, in order."""
    trials = []
    for path in sorted(storage.glob("gpu-study/trial_*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            trials.append(rows)
    return trials


def compile_kinds(trials: list[list[dict[str, Any]]], baseline_batch: int) -> dict[str, list]:
    """Each trial's (compile seconds, seconds to its first step before them), by how it started:
    on a new actor or a reused one (its process ran a trial before), and with a shape (batch
    size) new to the machine, already in the compile caches on disk, or compiled by that actor."""
    kinds: dict[str, list] = {f"{actor}, {shape}": [] for actor in ("new actor", "reused actor")
                              for shape in ("new shape", "shape on disk", "its own shape")}
    compiled_at = {baseline_batch: -math.inf}  # batch -> when a trial had compiled it on disk
    shapes_of: dict[int, set] = {}  # an actor's process -> the batch sizes it compiled
    for rows in sorted(trials, key=lambda rows: rows[0]["trial_start"]):
        first, last, batch = rows[0], rows[-1], rows[0]["config"].get("batch_size")
        start, up = first["trial_start"], first["trial_s"] - first["elapsed_s"]
        actor = "reused actor" if first["pid"] in shapes_of else "new actor"
        own = shapes_of.setdefault(first["pid"], set())
        shape = ("its own shape" if batch in own else
                 "shape on disk" if compiled_at.get(batch, math.inf) <= start else "new shape")
        kinds[f"{actor}, {shape}"].append((last["compile_s"], up))
        own.add(batch)
        done = start + up + last["compile_s"]
        compiled_at[batch] = min(compiled_at.get(batch, math.inf), done)
    return kinds


def measure(trials: list[list[dict[str, Any]]], concurrency: int) -> dict[str, Any]:
    """The study's figures from its trials' results (see the module's docstring)."""
    starts = [rows[0]["trial_start"] for rows in trials]
    ends = [rows[-1]["trial_start"] + rows[-1]["trial_s"] for rows in trials]
    span = max(ends) - min(starts)
    tokens = sum(rows[-1]["tokens_since_restore"] for rows in trials)
    steps_s, ups, mfu = 0.0, [], []
    for rows in trials:
        previous = 0
        for row in rows:
            if row["tokens_per_s"] > 0:
                steps_s += (row["tokens"] - previous) / row["tokens_per_s"]
            previous = row["tokens"]
            if row["mfu"] == row["mfu"]:  # not NaN (CPU)
                mfu.append(row["mfu"])
        ups.append(rows[0]["trial_s"] - rows[0]["elapsed_s"])  # to the trainer's first step
    last = [rows[-1] for rows in trials]
    return {
        "trials": len(trials), "span_s": span, "tokens": tokens, "tokens_per_s": tokens / span,
        "steps_share": steps_s / (span * concurrency), "startup_s": statistics.median(ups),
        "checkpoint_s_per_trial": statistics.mean(r["checkpoint_s"] for r in last),
        "checkpoint_share": sum(r["checkpoint_s"] for r in last) / steps_s,
        "disk_mb_per_trial": statistics.mean(r["checkpoint_bytes"] for r in last) / 1e6,
        "evaluations_max": max(len(rows) for rows in trials),
        "checkpoints_max": max(sum(1 for r in rows if r.get("checkpoint_dir_name"))
                               for rows in trials),
        "mfu": statistics.mean(mfu) if mfu else float("nan"),
    }


def versions() -> str:
    from importlib import metadata

    import torch

    names = ("ray", "optuna", "mlflow")
    return (f"Python {platform.python_version()}, torch {torch.__version__}, "
            + ", ".join(f"{n} {metadata.version(n)}" for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a CPU-sized run of the same code")
    parser.add_argument("--work", type=Path, help="folder for the data, the study and its stores")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--compile", choices=("auto", "true", "false"),
                        help="the trials' resources.compile (default: as lm.yaml ships it, auto)")
    parser.add_argument("--samples", type=int, help="trials of the study (default: 16; --tiny: 8)")
    parser.add_argument("--baseline-of", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_of:
        print(json.dumps(run_baseline(args.baseline_of, args.batch, args.steps)))
        return
    sizes = {**(TINY if args.tiny else GPU), **({"samples": args.samples} if args.samples else {})}
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-study-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "cache" / "tuner" / "torch-compile")
    data = random_dataset(work / "data", sizes["vocab"], sizes["train_tokens"],
                        sizes["valid_tokens"])
    space = study_file(work, data, args.tiny, sizes, args.compile)
    alone = baseline(space, sizes["baseline_batch"], sizes["baseline_steps"])
    wall = run_study(space, work)
    study = yaml.safe_load(space.read_text())
    trials = trial_results(work / "ray")
    figures = measure(trials, study["search"]["max_concurrent"])
    figures["compiles"] = compile_kinds(trials, sizes["baseline_batch"])
    figures.update(wall_s=wall, baseline=alone, ratio=figures["tokens_per_s"] /
                   alone["tokens_per_s"], command_tokens_per_s=figures["tokens"] / wall,
                   versions=versions())
    print(report(figures, study))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def report(f: dict[str, Any], study: dict[str, Any]) -> str:
    """The figures as markdown, for docs/benchmarks.md."""
    alone = f["baseline"]
    mfu = lambda value: "n/a" if value != value else f"{value:.1%}"  # noqa: E731 - NaN on a CPU
    return "\n".join([
        f"{f['versions']}; device {alone['device']}",
        f"study: {f['trials']} trials of B {study['hparams']['B']['choice']}, "
        f"{study['search']['max_concurrent']} at once, {study['budget']['tokens']:,} tokens a "
        f"full trial; command {f['wall_s']:.0f} s, trials' span {f['span_s']:.0f} s", "",
        "| figure | value |", "|---|---|",
        f"| one trial alone, B={alone['batch']}{' compiled' if alone['compiled'] else ''} | "
        f"{alone['tokens_per_s']:,.0f} tokens/s, MFU {mfu(alone['mfu'])} |",
        f"| the study's aggregate | {f['tokens_per_s']:,.0f} tokens/s "
        f"({f['tokens']:,} tokens) |",
        f"| its ratio to the baseline | {f['ratio']:.2f} |",
        f"| over the whole command (Ray's start and end too) | "
        f"{f['command_tokens_per_s']:,.0f} tokens/s |",
        f"| slot time in training steps | {f['steps_share']:.0%} |",
        f"| a trial's start-up to its first step, compiling aside (median) | "
        f"{f['startup_s']:.2f} s |",
        *(f"| compile seconds of a trial on a {kind} (median of {len(runs)}) | "
          f"{statistics.median(c for c, _ in runs):.1f} s, its first step "
          f"{statistics.median(u for _, u in runs):.2f} s after its start |"
          for kind, runs in f["compiles"].items() if runs),
        f"| checkpoint seconds on the training thread, per trial | "
        f"{f['checkpoint_s_per_trial']:.2f} s ({f['checkpoint_share']:.2%} of its steps) |",
        f"| disk written by checkpoints, per trial | {f['disk_mb_per_trial']:.1f} MB (at most "
        f"{f['checkpoints_max']} checkpoints in a trial of {f['evaluations_max']} evaluations) |",
        f"| MFU of the study's trials (mean) | {mfu(f['mfu'])} |"])


if __name__ == "__main__":
    main()
