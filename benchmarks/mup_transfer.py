"""Does the best α carry across widths? Train the same α grid at several widths under SP and under
μP (base width 64), with the RMSNorm gains trained or frozen, and report each width's best α.

    uv run python benchmarks/mup_transfer.py [--widths 64 128 256 512] [--steps 300]
        [--lrs 0.001 0.003 0.01 0.03 0.1]

Trains `model.train.train` on the bytes of Tiny Shakespeare (tests/fixtures; vocab 256, context
64, 2 layers, 4 heads, B 16, warmup 10%, cosine to 10%), on the CPU, one seed; the final
val_loss of each run. Prints markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np

from model.config import ModelConfig, TrainConfig
from model.train import train

TEXT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tinyshakespeare.txt"
ARMS = {"SP": {"parametrization": "sp"}, "μP": {"parametrization": "mup"},
        "μP, gains frozen": {"parametrization": "mup", "mup_norm_gains": "frozen"}}


def byte_dataset(folder: Path) -> Path:
    """A dataset folder whose tokens are the text's bytes (90% train, 10% valid)."""
    raw = np.frombuffer(TEXT.read_bytes(), dtype=np.uint8)
    split = int(len(raw) * 0.9)
    np.save(folder / "train.npy", raw[:split].astype(np.uint16))
    np.save(folder / "valid.npy", raw[split:].astype(np.uint16))
    (folder / "meta.json").write_text(json.dumps({
        "vocab_size": 256, "dtype": "uint16", "train_tokens": split,
        "valid_tokens": len(raw) - split, "special_tokens": []}))
    return folder


def final_val_loss(data: Path, width: int, lr: float, steps: int, arm: dict) -> float:
    model = ModelConfig(vocab_size=256, context_length=64, d_model=width, num_layers=2,
                        num_heads=4, mup_base_d_model=64 if arm["parametrization"] == "mup"
                        else None, **arm)
    config = TrainConfig(model=model, data=str(data), lr_max=lr, lr_min_ratio=0.1,
                         warmup_iters=steps // 10, total_iters=steps, batch_size=16,
                         eval_interval=steps, eval_windows=64, device="cpu", seed=0,
                         weight_decay=0.1)
    return train(config).records[-1].val_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = byte_dataset(Path(folder))
        for name, arm in ARMS.items():
            losses = {(w, lr): final_val_loss(data, w, lr, args.steps, arm)
                      for w in args.widths for lr in args.lrs}
            print(f"\n{name}: final val_loss by width (rows) and α (columns)\n")
            print("| d_model | " + " | ".join(f"α={lr:g}" for lr in args.lrs) + " | best α |")
            print("|---" * (len(args.lrs) + 2) + "|")
            for w in args.widths:
                row = [losses[w, lr] for lr in args.lrs]
                best = min(range(len(row)), key=lambda i: row[i] if math.isfinite(row[i])
                           else math.inf)
                cells = [f"**{v:.4f}**" if i == best else f"{v:.4f}" for i, v in enumerate(row)]
                print(f"| {w} | " + " | ".join(cells) + f" | {args.lrs[best]:g} |", flush=True)


if __name__ == "__main__":
    main()
