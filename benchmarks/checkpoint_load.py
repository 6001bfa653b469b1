"""Checkpoint loading: what checking the zip's CRC-32s adds to torch.load, on a checkpoint of
search_spaces/lm.yaml's model with its AdamW state (what a resumed, retried or replayed trial
reads).

    uv run python benchmarks/checkpoint_load.py [--repeats 5]

Prints a markdown table row for docs/benchmarks.md: medians of the repeats, the file in the page
cache (read once before timing).
"""

from __future__ import annotations

import argparse
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

LM_YAML = Path(__file__).resolve().parents[1] / "search_spaces" / "lm.yaml"


def lm_checkpoint(folder: Path) -> Path:
    """A checkpoint of lm.yaml's model after one AdamW step (so the optimizer holds its moments)."""
    config = TrainConfig(model=ModelConfig(**yaml.safe_load(LM_YAML.read_text())["model"]),
                         total_iters=10)
    model = TransformerLM(config.model)
    optimizer = build_optimizer(model, config)
    model(torch.zeros(1, 8, dtype=torch.long)).sum().backward()
    optimizer.step()
    return save_checkpoint(model, optimizer, 1, folder / "checkpoint.pt")


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The median wall time of `repeats` calls of fn."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = lm_checkpoint(Path(folder))
        path.read_bytes()  # into the page cache: the timings compare work, not the disk
        load = median_seconds(lambda: torch.load(path, map_location="cpu", weights_only=True),
                              args.repeats)
        read = median_seconds(lambda: read_checkpoint(path), args.repeats)
        crc = median_seconds(lambda: zipfile.ZipFile(path).testzip(), args.repeats)
        print("| file | torch.load | read_checkpoint (with the CRC-32 check) | the check alone |")
        print("|---|---|---|---|")
        print(f"| {path.stat().st_size / 1e6:.0f} MB | {load:.3f} s | {read:.3f} s | {crc:.3f} s |")


if __name__ == "__main__":
    main()
