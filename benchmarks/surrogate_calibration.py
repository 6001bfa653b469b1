"""The surrogate of the table of curves (tuner.search.trial.surrogate): fitted to the whole table
and saved, and its calibration on held-out rows (a surrogate fitted without them).

    uv run python benchmarks/surrogate_calibration.py [--table benchmarks/curves/cosine.npz]
        [--out benchmarks/curves/cosine_surrogate.npz] [--hold-out 8]

Prints, for the held-out rows (every `--hold-out`-th): the share of their seed curves' points
inside the surrogate's 68% and 95% bands (model uncertainty and seed noise), the Spearman ρ of
predicted and held-out mean finals, and the median |error| of the predicted mean at the first
rungs (1/16, 1/8, 1/4 of the budget) and at the end, in the table's pooled seed sd.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.linalg import cho_solve
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "benchmarks" / "curves" / "cosine.npz"
OUT = REPO / "benchmarks" / "curves" / "cosine_surrogate.npz"


def loo_scale(gp: Any) -> np.ndarray:
    """Per evaluation point, the mean square of the GP's leave-one-out residuals on its own
    rows in their predicted sd (1: calibrated; one kernel for every point is not at each)."""
    inverse = cho_solve((gp.L_, True), np.eye(len(gp.L_)))
    return np.mean(gp.alpha_ ** 2 / np.diag(inverse)[:, None], axis=0)


def bands(surrogate: Any, gp: Any, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predicted mean curves (M × P) at `unit` and the sd of a seed's curve about them: the
    GP's own uncertainty (its white noise left out), scaled at each point by its leave-one-out
    calibration, and the seed noise."""
    _, std = gp.predict(unit, return_std=True)
    white = gp.kernel_.k2.noise_level * gp._y_train_std ** 2
    log_var = np.maximum(std ** 2 - white, 0.0) * loo_scale(gp)
    mean = np.exp(surrogate.mean_log(unit))
    sd = np.sqrt(mean ** 2 * log_var + surrogate.offset ** 2 + surrogate.noise_sd ** 2)
    return mean, sd


def calibration(table: Any, held_out: np.ndarray, rest: np.ndarray | None = None,
                dense: int = 1 << 12) -> dict[str, float]:
    """The surrogate fitted to rows `rest` (all but `held_out` by default), measured on the
    rows `held_out`."""
    from tuner.search.trial import surrogate as model

    if rest is None:
        rest = np.setdiff1d(np.arange(len(table.params)), held_out)
    fitted, gp = model.fit(table, rest, dense=dense)
    mean, sd = bands(fitted, gp, table.unit[held_out])
    seeds = table.val_loss[held_out].astype(float)  # M × S × P
    z = np.abs(seeds - mean[:, None, :]) / sd[:, None, :]
    observed = seeds.mean(axis=1)
    pooled = table.pooled_seed_sd
    rungs = {f"1/{n}": len(table.tokens) // n - 1 for n in (16, 8, 4)} | {"end": -1}
    return {"rows": len(held_out), "in 68%": float(np.mean(z <= 1.0)),
            "in 95%": float(np.mean(z <= 1.96)),
            "spearman": float(spearmanr(mean[:, -1], observed[:, -1]).statistic),
            **{f"error {name}": float(np.median(np.abs(mean[:, k] - observed[:, k])) / pooled)
               for name, k in rungs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--hold-out", type=int, default=8, metavar="K",
                        help="hold out every K-th row for the calibration")
    args = parser.parse_args()
    from tuner.search.trial import curve_table
    from tuner.search.trial import surrogate as model

    table = curve_table.load(args.table)
    started = time.process_time()
    fitted, _ = model.fit(table)
    model.save(args.out, fitted)
    print(f"{args.out}: optimum {fitted.optimum:.4f} (table's best mean "
          f"{np.min(table.mean_final):.4f}), seed sd {fitted.seed_sd:.4f} (offset "
          f"{fitted.offset[-1]:.4f}, residual {fitted.noise_sd[-1]:.4f}, smooth share "
          f"{fitted.smooth[0]:.2f}), length scales "
          + " ".join(f"{n} {s:.2f}" for n, s in zip(table.space, fitted.length_scales))
          + f"; {time.process_time() - started:.0f} CPU-s")
    for start in range(2):
        figures = calibration(table, np.arange(start, len(table.params), args.hold_out))
        print(", ".join(f"{k} {v:.3f}" if not float(v).is_integer() else f"{k} {v:.0f}"
                        for k, v in figures.items()))
    print(f"CPU-s {time.process_time() - started:.0f}; normal 68%/95%: {math.erf(1 / 2 ** .5):.2f}")


if __name__ == "__main__":
    main()
