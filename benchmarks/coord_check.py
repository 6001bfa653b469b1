"""μP's coordinate check: train a few AdamW steps at widths 64…1024 under SP and under μP (base
width 64) and measure each layer's activation RMS. Under μP it stays flat as the width grows;
under SP the layers' outputs, the logits above all, grow with it.

    uv run python benchmarks/coord_check.py [--steps 5] [--lr 0.01] [--out docs/coord_check.png]

Trains on the bytes of Tiny Shakespeare (tests/fixtures), on the CPU. Prints a markdown table
(the RMS after --steps steps, by layer and width) for docs/benchmarks.md and writes the plot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import torch

from model.config import ModelConfig, TrainConfig
from model.layers import TransformerLM
from model.loss import cross_entropy
from model.optim import build_optimizer
from model.schedules import set_lr

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WIDTHS = (64, 128, 256, 512, 1024)
TEXT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tinyshakespeare.txt"
CONTEXT, BATCH = 64, 16
LABELS = {"sp": "SP", "mup": "μP"}


def layer_rms(parametrization: str, width: int, steps: int, lr: float) -> dict[str, float]:
    """Each layer's output RMS on a fixed batch after `steps` AdamW steps at `width`."""
    torch.manual_seed(0)
    model_cfg = ModelConfig(vocab_size=256, context_length=CONTEXT, d_model=width, num_layers=2,
                            num_heads=4, parametrization=parametrization, mup_base_d_model=64)
    cfg = TrainConfig(model=model_cfg, lr_max=lr, total_iters=steps, warmup_iters=0,
                      weight_decay=0.0)
    model = TransformerLM(model_cfg)
    optimizer = build_optimizer(model, cfg)
    set_lr(optimizer, lr)
    tokens = torch.from_numpy(np.frombuffer(TEXT.read_bytes(), dtype=np.uint8).astype(np.int64))
    batches = torch.Generator().manual_seed(1)
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - CONTEXT - 1, (BATCH,), generator=batches)
        x = torch.stack([tokens[s:s + CONTEXT] for s in starts])
        y = torch.stack([tokens[s + 1:s + CONTEXT + 1] for s in starts])
        cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seen: dict[str, float] = {}
    layers = {"embedding": model.token_embeddings, "block 1": model.layers[0],
              "block 2": model.layers[1]}
    hooks = [module.register_forward_hook(
        lambda _m, _i, out, name=name: seen.__setitem__(name, out.pow(2).mean().sqrt().item()))
        for name, module in layers.items()]
    with torch.no_grad():
        seen["logits"] = model(tokens[:CONTEXT].unsqueeze(0)).pow(2).mean().sqrt().item()
    for hook in hooks:
        hook.remove()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--out", type=Path, default=Path("docs/coord_check.png"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {p: {w: layer_rms(p, w, args.steps, args.lr) for w in WIDTHS} for p in ("sp", "mup")}
    names = list(results["sp"][WIDTHS[0]])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (parametrization, by_width) in zip(axes, results.items()):
        for name in names:
            ax.plot(WIDTHS, [by_width[w][name] for w in WIDTHS], marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="d_model", xticks=WIDTHS,
               title=f"{LABELS[parametrization]}: activation RMS after {args.steps} AdamW steps "
                     f"(α={args.lr:g})")
        ax.set_xticklabels([str(w) for w in WIDTHS])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("RMS of the layer's output")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"| layer | {' | '.join(f'SP {w}' for w in WIDTHS)} | "
          f"{' | '.join(f'μP {w}' for w in WIDTHS)} |")
    print("|---" * (1 + 2 * len(WIDTHS)) + "|")
    for name in names:
        cells = [f"{results[p][w][name]:.3g}" for p in ("sp", "mup") for w in WIDTHS]
        print(f"| {name} | {' | '.join(cells)} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
