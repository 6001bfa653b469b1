"""Training throughput, MFU and peak memory of the trainer's real loop, fast path on and off.

    uv run python benchmarks/trainer_throughput.py --preset cpu
    python benchmarks/trainer_throughput.py --preset cs336 --batch-sizes 32 64 128 --compile

Runs `model.train.train` itself on random tokens (so data loading, clipping and the optimizer step
are included) and reports the steady-state interval, after a warm-up interval that absorbs
compilation and allocator growth. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import ModelConfig, TrainConfig  # noqa: E402
from model.train import resolve_device, train  # noqa: E402

PRESETS = {
    "cs336": ModelConfig(vocab_size=10000, context_length=256, d_model=512, num_layers=4,
                         num_heads=16, d_ff=1344),
    "cpu": ModelConfig(vocab_size=1024, context_length=128, d_model=128, num_layers=2,
                       num_heads=4),
}


def random_dataset(folder: Path, vocab_size: int, tokens: int = 4_000_000) -> Path:
    """A dataset folder of uniformly random token ids (throughput does not depend on the text)."""
    rng = np.random.default_rng(0)
    np.save(folder / "train.npy", rng.integers(0, vocab_size, tokens, dtype=np.uint16))
    np.save(folder / "valid.npy", rng.integers(0, vocab_size, 100_000, dtype=np.uint16))
    (folder / "meta.json").write_text(json.dumps({"vocab_size": vocab_size}))
    return folder


def measure(model: ModelConfig, data: Path, batch_size: int, steps: int, fast: bool,
            compile_model: bool, device: str) -> dict:
    """Train 2×`steps` steps; report the second interval's tokens/s and MFU, and peak memory."""
    config = TrainConfig(model=model, data=str(data), batch_size=batch_size, total_iters=2 * steps,
                         eval_interval=steps, eval_windows=4, device=device, fast=fast,
                         compile=compile_model, sample_tokens=0, warmup_iters=1)
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    result = train(config)
    steady = result.records[-1]
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"batch_size": batch_size, "fast": fast, "compile": compile_model,
            "tokens_per_s": steady.tokens_per_s, "mfu": steady.mfu, "peak_gib": peak / 2**30,
            "params": result.num_params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16])
    parser.add_argument("--steps", type=int, default=20, help="steps per measured interval")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    model = PRESETS[args.preset]
    dev = resolve_device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    variants = [(False, False), (True, False)] + ([(True, True)] if args.compile else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = random_dataset(Path(tmp), model.vocab_size)
        for batch in args.batch_sizes:
            for fast, compiled in variants:
                rows.append(measure(model, data, batch, args.steps, fast, compiled, args.device))
    print(f"preset {args.preset} ({rows[0]['params']:,} parameters) on {name}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| batch | fast path | compile | tokens/s | MFU | peak memory (GiB) |")
    print("|---:|---|---|---:|---:|---:|")
    for r in rows:
        mfu = "n/a" if r["mfu"] != r["mfu"] else f"{r['mfu']:.1%}"
        print(f"| {r['batch_size']} | {'on' if r['fast'] else 'off'} | "
              f"{'on' if r['compile'] else 'off'} | {r['tokens_per_s']:,.0f} | {mfu} | "
              f"{r['peak_gib']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
