"""What a compiled trial's start costs, against an eager one's: one step and one evaluation of the
quickstart's model (B=16), timed from `train()`'s call to its return, each row a fresh process (a
new Ray actor) or a second run in the same one (a reused actor).

    uv run python benchmarks/compile_startup.py [--preset quickstart|lm] [--threads 1]

torch's compile caches start empty in a temporary folder: the first compiled process compiles
cold, the second finds the shape on disk, and its second run reuses the process's graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml
from random_tokens import random_dataset

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"quickstart": REPO / "search_spaces" / "quickstart.yaml",
           "lm": REPO / "search_spaces" / "lm.yaml"}


def runs(data: Path, preset: str, compile: bool, count: int, threads: int) -> list[dict]:
    """`count` runs of one step and one evaluation in this process: wall and compile seconds."""
    import torch

    from model.compiled import compile_seconds
    from model.config import ModelConfig, TrainConfig
    from model.train import train

    torch.set_num_threads(threads)
    model = ModelConfig(**yaml.safe_load(PRESETS[preset].read_text())["model"])
    config = TrainConfig(model=model, data=str(data), total_iters=1, eval_interval=1,
                         eval_windows=16, batch_size=16, sample_tokens=0, device="cpu",
                         compile=compile)
    out = []
    for i in range(count):
        before, start = compile_seconds(), time.perf_counter()
        train(replace(config, seed=i))  # another seed: nothing but the graph is shared
        out.append({"wall_s": time.perf_counter() - start,
                    "compile_s": compile_seconds() - before})
    return out


def in_new_process(data: Path, preset: str, compile: bool, count: int, threads: int,
                   cache: Path) -> list[dict]:
    """`runs` in a fresh process whose torch compile caches are `cache`."""
    proc = subprocess.run(
        [sys.executable, __file__, "--runs-of", str(data), "--preset", preset, "--count",
         str(count), "--threads", str(threads), *(["--compile"] if compile else [])],
        capture_output=True, text=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)})
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quickstart")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial's CPUs)")
    parser.add_argument("--runs-of", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runs_of:
        print(json.dumps(runs(args.runs_of, args.preset, args.compile, args.count, args.threads)))
        return
    with tempfile.TemporaryDirectory() as folder:
        vocab = yaml.safe_load(PRESETS[args.preset].read_text())["model"]["vocab_size"]
        data, cache = random_dataset(Path(folder) / "data", vocab), Path(folder) / "cache"
        go = lambda compile, count: in_new_process(  # noqa: E731
            data, args.preset, compile, count, args.threads, cache)
        eager, cold, warm = go(False, 2), go(True, 1), go(True, 2)
    rows = [("eager, a new actor", eager[0]), ("eager, a reused actor", eager[1]),
            ("compiled, a new actor, a shape new to the machine", cold[0]),
            ("compiled, a new actor, the shape on disk", warm[0]),
            ("compiled, a reused actor, its own shape", warm[1])]
    print(f"{args.preset} model, B=16, {args.threads} torch thread(s): one step and one "
          "evaluation\n\n| trial start | wall | of which compiling | beyond eager's |\n"
          "|---|---|---|---|")
    for name, row in rows:
        base = eager[0 if "new actor" in name else 1]["wall_s"]
        print(f"| {name} | {row['wall_s']:.2f} s | {row['compile_s']:.2f} s | "
              f"{row['wall_s'] - base:+.2f} s |")


if __name__ == "__main__":
    main()
