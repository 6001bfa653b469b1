"""`tuner scale` on three small CPU studies: widths 32, 64 and 128 of a 2-layer model on the
synthetic corpus, each a grid of α_max × B, then the fit and its prediction for a 10M model.

    uv run python benchmarks/scaling_fit.py [--out DIR] [--tokens 102400]

Writes the study files to DIR, runs `tuner search` on each and `tuner scale` on the three (by
default and with --margin 0.01), recording to DIR/mlflow.db, and prints each command's wall time
and the fit's output, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

WIDTHS = (32, 64, 128)
TUNER = Path(sys.executable).with_name("tuner")


def study(width: int, tokens: int, uri: str) -> dict:
    """The grid study at `width` (4 heads, d_ff 8/3·width rounded to 64 by the trainer)."""
    return {"name": f"width{width}", "data": {"source": "synthetic"},
            "model": {"vocab_size": 512, "context_length": 64, "d_model": width,
                      "num_layers": 2, "num_heads": 4},
            "hparams": {"α_max": {"grid": [0.002, 0.005, 0.01, 0.02, 0.05]},
                        "B": {"grid": [8, 32]}, "warmup_fraction": 0.05},
            "budget": {"tokens": tokens, "eval_tokens": tokens // 4, "eval_windows": 32},
            "search": {"algorithm": "grid", "scheduler": "none", "max_concurrent": 2},
            "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0, "device": "cpu"},
            "tracking": {"uri": uri, "log_checkpoints": "none"}}


def timed(args: list[str], cwd: Path) -> str:
    """Run `tuner ARGS`, print its wall time, return its output (exit on failure)."""
    start = time.perf_counter()
    proc = subprocess.run([str(TUNER), *args], cwd=cwd, capture_output=True, text=True)
    print(f"tuner {' '.join(args)}: exit {proc.returncode}, {time.perf_counter() - start:.1f} s")
    if proc.returncode:
        sys.exit(proc.stdout + proc.stderr)
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/scaling_benchmark"))
    parser.add_argument("--tokens", type=int, default=102400)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    for width in WIDTHS:
        path = out / f"width{width}.yaml"
        path.write_text(yaml.safe_dump(study(width, args.tokens, uri), sort_keys=False,
                                       allow_unicode=True))
        timed(["search", "--space", str(path), "--storage", str(out / "ray")], out)
    studies = [a for width in WIDTHS for a in ("--study", f"width{width}")]
    target = ["--target-params", "10000000", "--target-tokens", "200000000"]
    for extra in ([], ["--margin", "0.01", "--name", "scale-width32-1pc"]):
        print(timed(["scale", *studies, *target, *extra, "--tracking-uri", uri], out))


if __name__ == "__main__":
    main()
