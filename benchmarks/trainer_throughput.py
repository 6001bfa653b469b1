"""Training throughput, MFU and peak memory of the trainer's real loop, fast path on and off.

    uv run python benchmarks/trainer_throughput.py --preset cpu
    python3 benchmarks/trainer_throughput.py --preset cs336 --batch-sizes 32 64 128 256 \
        --compile --steps 50

Runs `model.train.train` itself on random tokens (so data loading, clipping and the optimizer step
are included) and reports the steady-state interval, after a warm-up interval that absorbs
compilation and allocator growth. Prints the machine and versions, then a markdown table, a row
as each finishes (a batch size that runs out of GPU memory, or fails to compile, is a row that
says so, and the others still run).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import ModelConfig, TrainConfig  # noqa: E402
from model.layers import TransformerLM  # noqa: E402
from model.train import peak_flops_of, resolve_device, train  # noqa: E402
from random_tokens import random_dataset  # noqa: E402 - beside this script

PRESETS = {
    "cs336": ModelConfig(vocab_size=10000, context_length=256, d_model=512, num_layers=4,
                         num_heads=16, d_ff=1344),
    "cpu": ModelConfig(vocab_size=1024, context_length=128, d_model=128, num_layers=2,
                       num_heads=4),
}


def measure(model: ModelConfig, data: Path, batch_size: int, steps: int, fast: bool,
            compile_model: bool, device: str) -> dict:
    """Train 2×`steps` steps; report the second interval's tokens/s and MFU, and peak memory."""
    config = TrainConfig(model=model, data=str(data), batch_size=batch_size, total_iters=2 * steps,
                         eval_interval=steps, eval_windows=4, device=device, fast=fast,
                         compile=compile_model, sample_tokens=0, warmup_iters=1)
    dev = resolve_device(device)
    gc.collect()
    row = {"batch_size": batch_size, "fast": fast, "compile": compile_model}
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        result = train(config)
    except Exception as err:  # noqa: BLE001 - one row's failure (OOM, a compile error) is its row
        return {**row, "error": "out of memory" if _out_of_memory(err)
                else f"{type(err).__name__}: {err}"[:200]}
    if result.status != "completed" or len(result.records) != 2:
        return {**row, "error": f"the run {result.status} after {result.steps} steps"}
    steady = result.records[-1]
    # on a GPU what torch held from it (its cache too: what a co-located trial cannot have)
    peak = (torch.cuda.max_memory_reserved(dev) if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {**row, "tokens_per_s": steady.tokens_per_s,
            "mfu": None if steady.mfu != steady.mfu else steady.mfu,  # unknown peak: JSON null
            "peak_gib": peak / 2**30}


def _out_of_memory(err: BaseException | None) -> bool:
    """Whether `err`, or an error it was raised from (inside compilation, say), is a GPU OOM."""
    while err is not None:
        if isinstance(err, torch.cuda.OutOfMemoryError):
            return True
        err = err.__cause__ or err.__context__
    return False


def table_row(r: dict) -> str:
    """One markdown row of a measurement."""
    switches = f"| {r['batch_size']} | {'on' if r['fast'] else 'off'} | " \
               f"{'on' if r['compile'] else 'off'} |"
    if r.get("error"):
        return f"{switches} {r['error']} | | |"
    mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
    return f"{switches} {r['tokens_per_s']:,.0f} | {mfu} | {r['peak_gib']:.2f} |"


def machine(dev: torch.device) -> dict:
    """What a recorded figure needs beside it: date, device, versions and the command."""
    gpu = dev.type == "cuda"
    name = torch.cuda.get_device_name(dev) if gpu else platform.processor() or "cpu"
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": name,
            "gpu_memory_gib": torch.cuda.get_device_properties(dev).total_memory / 2**30
            if gpu else None, "peak_flops": peak_flops_of(name) if gpu else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "numpy": np.__version__,
            "threads": torch.get_num_threads(), "command": " ".join(sys.argv)}


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
    about = {"preset": args.preset, "parameters": TransformerLM(model).num_params(),
             **machine(resolve_device(args.device))}
    variants = [(False, False), (True, False)] + ([(True, True)] if args.compile else [])
    print("\n".join(f"{key}: {value}" for key, value in about.items()) + "\n")
    print("| batch | fast path | compile | tokens/s | MFU | peak memory (GiB) |")
    print("|---:|---|---|---:|---:|---:|", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = random_dataset(Path(tmp), model.vocab_size)
        for batch in args.batch_sizes:
            for fast, compiled in variants:
                rows.append(measure(model, data, batch, args.steps, fast, compiled, args.device))
                print(table_row(rows[-1]), flush=True)
                if args.json:  # after every row: a run cut short keeps what it measured
                    args.json.write_text(json.dumps({**about, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
