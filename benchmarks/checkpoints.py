"""Checkpoints of search_spaces/lm.yaml's model with its AdamW state: what writing one durably
(fsync of the file and its folder) costs over a plain write, what checking the zip's CRC-32s
adds to torch.load (what a resumed, retried or replayed trial reads), and what a checkpoint costs
a trial's training thread, written as it is waited for or in the background.

    uv run python benchmarks/checkpoints.py [--repeats 5] [--folder DIR] [--trial-steps 24]

Prints three markdown tables for docs/benchmarks.md: medians of the repeats. Writes go to --folder
(default: the system's temporary folder; put it on the disk the study's --storage uses); reads
time the file in the page cache (read once before timing). The third trains the model on random
tokens (batch 2, an evaluation and a checkpoint every 2 steps), each checkpoint waited for before
training goes on or written in the background (as trials write theirs), on one torch thread and
on every core: the training thread's seconds per checkpoint and the steps' tokens/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from model.checkpoint import read_checkpoint, save_checkpoint
from model.config import ModelConfig, TrainConfig
from model.layers import TransformerLM
from model.optim import build_optimizer
from model.train import train
from random_tokens import random_dataset

LM_YAML = Path(__file__).resolve().parents[1] / "search_spaces" / "lm.yaml"


def lm_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """lm.yaml's model after one AdamW step (so the optimizer holds its moments)."""
    config = TrainConfig(model=ModelConfig(**yaml.safe_load(LM_YAML.read_text())["model"]),
                         total_iters=10)
    model = TransformerLM(config.model)
    optimizer = build_optimizer(model, config)
    model(torch.zeros(1, 8, dtype=torch.long)).sum().backward()
    optimizer.step()
    return model, optimizer


def plain_save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, out: Path) -> None:
    """save_checkpoint's write without its fsyncs: atomic, not durable."""
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save({"model": model.state_dict(), "iteration": 1,
                "optimizer": optimizer.state_dict()}, tmp)
    os.replace(tmp, out)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The median wall time of `repeats` calls of fn."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def trial_costs(folder: Path, steps: int) -> list[str]:
    """A short trial of lm.yaml's model with a checkpoint at each of its evaluations, once waited
    for and once in the background, on one torch thread (a trial of cpus_per_trial 1, with a
    core left for the writer) and on every core: the training thread's seconds per checkpoint and
    the steps' tokens/s (the first interval, where the host buffers are allocated, left out)."""
    model = ModelConfig(**yaml.safe_load(LM_YAML.read_text())["model"])
    data = random_dataset(folder / "data", model.vocab_size, 200_000, 20_000)
    config = TrainConfig(model=model, data=str(data), total_iters=steps, batch_size=2,
                         eval_interval=2, eval_windows=2, sample_tokens=0, device="cpu")
    lines = ["| torch threads | checkpoint at each evaluation | training thread per checkpoint "
             "| steps' tokens/s |", "|---|---|---|---|"]
    for threads in sorted({1, os.cpu_count() or 1}):  # a trial's cpus_per_trial; every core
        torch.set_num_threads(threads)
        for how, every_s in (("waited for (a synchronous write)", 0.0),
                             ("in the background", 1e-9)):
            records = train(config, checkpoint_dir=folder / f"{threads}{how[:6]}",
                            checkpoint_every_s=every_s).records
            per = (records[-1].checkpoint_s - records[1].checkpoint_s) / (len(records) - 2)
            speed = statistics.mean(r.tokens_per_s for r in records[1:])
            lines.append(f"| {threads} | {how} | {per:.3f} s | {speed:,.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--trial-steps", type=int, default=24)
    args = parser.parse_args()
    model, optimizer = lm_model()
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        path = Path(folder) / "checkpoint.pt"
        plain = median_seconds(lambda: plain_save(model, optimizer, path), args.repeats)
        durable = median_seconds(lambda: save_checkpoint(model, optimizer, 1, path), args.repeats)
        size = path.stat().st_size / 1e6
        print("| file | plain write (atomic) | save_checkpoint (atomic, fsynced) | fsync's cost |")
        print("|---|---|---|---|")
        print(f"| {size:.0f} MB | {plain:.3f} s | {durable:.3f} s | {durable - plain:+.3f} s |")
        path.read_bytes()  # into the page cache: the timings compare work, not the disk
        load = median_seconds(lambda: torch.load(path, map_location="cpu", weights_only=True),
                              args.repeats)
        read = median_seconds(lambda: read_checkpoint(path), args.repeats)
        crc = median_seconds(lambda: zipfile.ZipFile(path).testzip(), args.repeats)
        print("\n| file | torch.load | read_checkpoint (with the CRC-32 check) | the check alone |")
        print("|---|---|---|---|")
        print(f"| {size:.0f} MB | {load:.3f} s | {read:.3f} s | {crc:.3f} s |")
        print("", *trial_costs(Path(folder), args.trial_steps), sep="\n")


if __name__ == "__main__":
    main()
