"""A surrogate of a table of learning curves (tuner.search.trial.curve_table): the mean learning
curve of any point of the table's space, and seed noise drawn as a field shared across
configurations, so that a simulated study of seed s meets noise of its own.

Mean: the log of the table's mean-over-seeds curves, each evaluation point's a Gaussian process
over the unit cube, all with one kernel (Matérn 5/2, a length scale per dimension; a choice such
as B at its cell's centre, as the table places it): principal components of the log curves with
a GP on each, where every component shares the kernel. Noise, for training seed s, at point x and
evaluation k: o_s·a_k (a per-seed offset, a_k from the mean difference of the table's two
seeds) + c_k·(√f·g_{s,k}(x) + √(1−f)·e_{s,k}(x)), with g a smooth unit-variance field (random
Fourier features of the GP's length scales, drawn from s) and e white noise keyed
by (x, s): the same (point, seed) always gives the same curve. numpy only to read and answer;
scikit-learn to fit (`fit`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tuner.errors import UserError
from tuner.search.trial.curve_table import CurveTable, check_same_study, unit_point

FORMAT = "surrogate 1"
FEATURES = 256  # random Fourier features of the smooth noise field
ARRAYS = ("tokens", "train_unit", "coef", "log_mean", "length_scales", "offset", "noise_sd",
          "seconds", "smooth")


def matern52(a: np.ndarray, b: np.ndarray, length_scales: np.ndarray) -> np.ndarray:
    """The Matérn 5/2 correlation of the rows of `a` with those of `b`."""
    d = np.sqrt(np.maximum(
        (((a[:, None, :] - b[None, :, :]) / length_scales) ** 2).sum(-1), 0.0)) * math.sqrt(5)
    return (1 + d + d * d / 3) * np.exp(-d)


@dataclass(frozen=True)
class Surrogate:
    """A fitted surrogate (`fit`, `load`): arrays named as in `ARRAYS`, and `meta` (the study,
    its space, the table it was fitted to, its true optimum)."""

    path: Path | None
    meta: dict[str, Any]
    tokens: np.ndarray  # P evaluation points
    train_unit: np.ndarray  # N × D: the fitted configurations' coordinates
    coef: np.ndarray  # P × N: the GP's weights (log curve = log_mean + k(x, X) @ coef.T)
    log_mean: np.ndarray  # P: the mean log curve
    length_scales: np.ndarray  # D: the kernel's, also those of the noise's smooth part
    offset: np.ndarray  # P: a seed's offset per unit of its draw
    noise_sd: np.ndarray  # P: the sd of a seed's residual about the offset
    seconds: np.ndarray  # per full run, at each value of the time column (B)
    smooth: np.ndarray  # [f]: the share of the residual's variance that is smooth
    sha256: str = ""  # the file's, once loaded
    fixed: dict[str, Any] = field(default_factory=dict)  # a part of the space: its constants

    @property
    def space(self) -> dict[str, dict[str, Any]]:
        return self.meta["space"]

    @property
    def optimum(self) -> float:
        """The noise-free minimum of the final val_loss over a dense sample of the space."""
        return float(self.meta["optimum"]["final"])

    @property
    def seed_sd(self) -> float:
        """The sd of one seed's final val_loss about the mean curve (offset and residual)."""
        return float(math.hypot(self.offset[-1], self.noise_sd[-1]))

    def point(self, params: Mapping[str, Any]) -> np.ndarray:
        return unit_point(self.space, {**self.fixed, **params})

    def mean_log(self, unit: np.ndarray) -> np.ndarray:
        """M × P: the noise-free log curves at coordinates `unit` (M × D)."""
        return self.log_mean + matern52(unit, self.train_unit, self.length_scales) @ self.coef.T

    def mean(self, params: Mapping[str, Any]) -> np.ndarray:
        """The noise-free val_loss curve of a sample, at `tokens`."""
        return np.exp(self.mean_log(self.point(params)[None])[0])

    def noise(self, unit: np.ndarray, seed: int) -> np.ndarray:
        """M × P: training seed `seed`'s noise at coordinates `unit` (M × D)."""
        draw, normal, scale, phase, weights = _field_draws(int(seed), len(self.tokens),
                                                           unit.shape[1])
        omega = normal / self.length_scales / scale
        field = math.sqrt(2 / FEATURES) * (np.cos(
            np.einsum("pfd,md->mpf", omega, unit) + phase) * weights).sum(-1)
        white = np.stack([np.random.default_rng(
            [int(seed) & 0xFFFFFFFF, 2, *np.frombuffer(u.astype(np.float64).tobytes(),
                                                        dtype=np.uint32)]
        ).standard_normal(len(self.tokens)) for u in unit])
        f = float(self.smooth[0])
        return draw * self.offset + self.noise_sd * (
            math.sqrt(f) * field + math.sqrt(1 - f) * white)

    def curve(self, params: Mapping[str, Any], seed: int) -> np.ndarray:
        """The val_loss curve, at `tokens`, of the trial of sample `params` trained with `seed`."""
        unit = self.point(params)[None]
        return np.exp(self.mean_log(unit)[0]) + self.noise(unit, seed)[0]

    def run_seconds(self, params: Mapping[str, Any]) -> float:
        """A full run's CPU seconds at the sample's B (the table's mean at that B)."""
        name, values = self.meta["time_column"], self.meta["time_values"]
        return float(self.seconds[values.index({**self.fixed, **params}[name])])

    def check_study(self, study: Any) -> None:
        """UserError naming the file where `study` is not the one the surrogate stands for, nor
        a part of its space (it answers any point of that)."""
        check_same_study(self.path, self.meta["study"], study, "surrogate", subspace=True)

    def for_study(self, study: Any) -> Surrogate:
        """The surrogate checked against `study` and answering its trials: where the study fixes
        a hyperparameter the surrogate's space searches, at the study's value."""
        self.check_study(study)
        hparams = study.resolved()["hparams"]
        return replace(self, fixed={name: hparams[name] for name in self.space
                                    if not isinstance(hparams[name], dict)})

    def check_dataset(self, sha256: str) -> None:
        """UserError naming the file when the study's dataset is not the table's."""
        if sha256 != self.meta["dataset_sha256"]:
            raise UserError(f"{self.path}: a surrogate of another dataset (sha256 "
                            f"{self.meta['dataset_sha256'][:12]}…, the study's {sha256[:12]}…)")


@functools.lru_cache(maxsize=4)
def _field_draws(seed: int, points: int, dims: int) -> tuple[float, np.ndarray, ...]:
    """Seed `seed`'s draws: its offset's, and its smooth field's features (a Student t of 5
    degrees of freedom per dimension, Matérn 5/2's spectral density, before length scales)."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 1])
    return (rng.standard_normal(), rng.standard_normal((points, FEATURES, dims)),
            np.sqrt(rng.chisquare(5, (points, FEATURES, 1)) / 5),
            rng.uniform(0, 2 * math.pi, (points, FEATURES)),
            rng.standard_normal((points, FEATURES)))


def fit(table: CurveTable, rows: Sequence[int] | None = None,
        dense: int = 1 << 15) -> tuple[Surrogate, Any]:
    """Fit a surrogate to the table's `rows` (all by default), deterministically, its optimum
    the least final over those rows and `dense` Sobol points; with it, the
    fitted scikit-learn GP (its `predict(..., return_std=True)` gives the model's own
    uncertainty of each log point)."""
    from scipy.stats import qmc
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    rows = np.arange(len(table.params)) if rows is None else np.asarray(rows)
    if not np.all(np.isfinite(table.val_loss[rows])):
        raise UserError(f"{table.path}: a surrogate fits tables without diverged runs")
    x, losses = table.unit[rows], table.val_loss[rows].astype(float)
    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(
        np.ones(x.shape[1]), (0.1, 1e3), nu=2.5) + WhiteKernel(1e-2, (1e-8, 1))
    gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0).fit(
        x, np.log(losses.mean(axis=1)))
    amplitude, scales = gp.kernel_.k1.k1.constant_value, gp.kernel_.k1.k2.length_scale
    coef = (gp.alpha_ * amplitude * gp._y_train_std).T
    diff = losses[:, 0] - losses[:, 1]
    offset = diff.mean(axis=0) / math.sqrt(2)
    residual = diff - diff.mean(axis=0)
    noise_sd = residual.std(axis=0) / math.sqrt(2)
    scales = np.asarray(scales, dtype=float)
    smooth = _smooth_share(x, residual / residual.std(axis=0), scales)
    column = list(table.space).index(_time_column(table))
    values = table.space[_time_column(table)]["choice"]
    seconds = np.array([float(np.nanmean(table.cpu_s[rows][table.params[rows, column] == v]))
                        for v in values])
    meta = {"format": FORMAT, "study": table.meta["study"], "space": table.space,
            "table": {"path": table.path.name, "sha256": table.sha256, "rows": len(rows)},
            "time_column": _time_column(table), "time_values": values,
            "dataset_sha256": table.meta["dataset_sha256"]}
    surrogate = Surrogate(None, meta, table.tokens.copy(), x, coef,
                          np.asarray(gp._y_train_mean, dtype=float), scales, offset, noise_sd,
                          seconds, np.array([smooth]))
    unit = qmc.Sobol(x.shape[1], seed=1).random(dense)
    unit = np.concatenate([x, np.stack([unit_point(table.space, dict(zip(table.space, params)))
                                        for params in _values(table.space, unit)])])
    finals = np.concatenate([np.exp(surrogate.mean_log(unit[i:i + 4096])[:, -1])
                             for i in range(0, len(unit), 4096)])
    best = int(np.argmin(finals))
    meta["optimum"] = {"final": float(finals[best]), "unit": unit[best].tolist(),
                       "sample": dense}
    return surrogate, gp


def _values(space: Mapping[str, Any], unit: np.ndarray) -> list[list[Any]]:
    """The samples (values in column order) at Sobol coordinates `unit`."""
    from tuner.search.trial.curve_table import from_unit

    columns = [from_unit(dist, unit[:, i]) for i, dist in enumerate(space.values())]
    return [list(row) for row in zip(*columns)]


def _time_column(table: CurveTable) -> str:
    """The searched batch size: its values set a run's seconds."""
    names = [name for name, dist in table.space.items()
             if name == "batch_size" and "choice" in dist]
    if not names:
        raise UserError(f"{table.path}: a surrogate needs the batch size searched as a choice")
    return names[0]


def _smooth_share(x: np.ndarray, residual: np.ndarray, length_scales: np.ndarray) -> float:
    """The share of the seeds' residual difference that a GP of the mean's length scales
    explains as smooth, the rest white (the mean over every fourth point)."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    kernel = ConstantKernel(0.5, (1e-4, 10)) * Matern(length_scales, "fixed", nu=2.5) \
        + WhiteKernel(0.5, (1e-4, 10))
    shares = []
    for k in range(0, residual.shape[1], 4):
        gp = GaussianProcessRegressor(kernel, random_state=0).fit(x, residual[:, k])
        smooth, white = gp.kernel_.k1.k1.constant_value, gp.kernel_.k2.noise_level
        shares.append(smooth / (smooth + white))
    return float(np.mean(shares))


def save(path: str | Path, surrogate: Surrogate) -> Path:
    """Write a surrogate file (a temporary file renamed over `path`), compressed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            np.savez_compressed(out, meta=np.array(json.dumps(surrogate.meta, ensure_ascii=False)),
                                **{name: getattr(surrogate, name) for name in ARRAYS})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def is_surrogate(path: str | Path) -> bool:
    """Whether the `.npz` at `path` says it is a surrogate (False for anything else)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return json.loads(str(archive["meta"])).get("format") == FORMAT
    except Exception:  # noqa: BLE001 - unreadable: load() names what is wrong
        return False


def load(path: str | Path) -> Surrogate:
    """Read a surrogate file; UserError naming it when it is missing, damaged or not one."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(str(arrays.pop("meta")))
    except FileNotFoundError:
        raise UserError(f"{path}: no such surrogate file") from None
    except Exception as err:  # noqa: BLE001 - zip, zlib, numpy's or JSON's: damaged, or not one
        raise UserError(f"{path}: not a surrogate, or a damaged one "
                        f"({type(err).__name__}: {err})"[:400]) from None
    missing = [name for name in ARRAYS if name not in arrays]
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or missing:
        raise UserError(f"{path}: not a surrogate of format {FORMAT!r}")
    surrogate = Surrogate(path, meta, **{name: arrays[name] for name in ARRAYS},
                          sha256=hashlib.sha256(raw).hexdigest())
    n, d, p = len(surrogate.train_unit), len(meta["space"]), len(surrogate.tokens)
    shapes = {"coef": (p, n), "length_scales": (d,), "train_unit": (n, d), "offset": (p,),
              "noise_sd": (p,), "log_mean": (p,)}
    bad = [name for name, shape in shapes.items() if arrays[name].shape != shape]
    if bad or not all(np.all(np.isfinite(arrays[name])) for name in ARRAYS):
        raise UserError(f"{path}: a damaged surrogate ({', '.join(bad) or 'non-finite values'})")
    return surrogate
