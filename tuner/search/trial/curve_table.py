"""A table of learning curves (benchmarks/curves): configurations of one study, each trained to
the end with two seeds and evaluated at the same token points. Its file format, its checks
against a study, and the configuration nearest to a sample, read by replayed studies (`tuner
search --curve-table`) and by simulators. numpy only: no torch, no Ray.

The file is one `.npz` (docs/curves.md): the arrays below and `meta`, a JSON text holding the
study the table stands for, the searched space in column order, the training seeds and the
provenance. A configuration's coordinates in the unit cube are those of its values under their
distributions: log-scaled in a loguniform range, linear in a uniform one, the centre of the
index's cell in a choice list ((i + ½)/n, as a Sobol coordinate u picks index ⌊u·n⌋).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuner.errors import UserError

FORMAT = 1
SEEDS = 2  # a table's seeds: its seed k was trained with training seed k
SUPPORTED = ("loguniform", "uniform", "choice")  # the distributions a table's columns may have
# name: (dtype kind, shape in N configurations, S seeds, P points, D searched parameters)
ARRAYS = {"params": ("f", "ND"),  # the values of the searched parameters (a choice's as given)
          "tokens": ("i", "P"),  # the evaluation points: tokens trained
          "steps": ("i", "NP"),  # the optimizer steps at each point
          "val_loss": ("f", "NSP"),  # inf at a divergence, NaN after it (never evaluated)
          "train_loss": ("f", "NSP"),  # the mean train loss since the evaluation before
          "tokens_per_s": ("f", "NS"),  # the trainer's tokens/s over the whole run (wall clock)
          "cpu_s": ("f", "NS"),  # the run's CPU seconds, its evaluations included
          "seed_sd": ("f", "N")}  # the sd of the two seeds' final val_loss: |a − b|/√2
META = "meta"


def to_unit(dist: Mapping[str, Any], values: Any) -> np.ndarray:
    """Values of a distribution (its YAML form) as coordinates in [0, 1]."""
    (kind, spec), = dist.items()
    if kind == "loguniform":
        return ((np.log(np.asarray(values, dtype=float)) - math.log(spec[0]))
                / (math.log(spec[1]) - math.log(spec[0])))
    if kind == "uniform":
        return (np.asarray(values, dtype=float) - spec[0]) / (spec[1] - spec[0])
    index = np.array([spec.index(v) for v in np.atleast_1d(values)], dtype=float)
    return ((index + 0.5) / len(spec)).reshape(np.shape(values))


def from_unit(dist: Mapping[str, Any], u: np.ndarray) -> list[Any]:
    """The values of a distribution (its YAML form) at coordinates `u` in [0, 1) (a Sobol
    point's): exp-interpolated, interpolated, or the choice of index ⌊u·n⌋."""
    (kind, spec), = dist.items()
    if kind == "loguniform":
        return [float(v) for v in np.exp(math.log(spec[0]) + u * math.log(spec[1] / spec[0]))]
    if kind == "uniform":
        return [float(v) for v in spec[0] + u * (spec[1] - spec[0])]
    return [spec[min(int(x * len(spec)), len(spec) - 1)] for x in u]


def searched_space(study: Any) -> dict[str, dict[str, Any]]:
    """The study's searched parameters (name → distribution in YAML form), in sampling order;
    UserError for a distribution a table cannot have as a column."""
    space = {name: dist.to_yaml() for name, dist in study.searched().items()}
    odd = [name for name, dist in space.items() if next(iter(dist)) not in SUPPORTED or any(
        isinstance(v, (bool, str)) or v is None for v in dist.get("choice", ()))]
    if odd:
        raise UserError(f"a curve table's columns are loguniform, uniform or numeric choice "
                        f"distributions, not those of {', '.join(odd)}")
    return space


def study_key(study: Any) -> dict[str, Any]:
    """What makes a table's curves those of `study`: its model, hyperparameters (constants and
    distributions, resolved) and budget but its seed, which picks the table's seed, and its
    noise_interval (measuring B_simple leaves training bit for bit as it was)."""
    resolved = study.resolved()
    budget = {k: v for k, v in resolved["budget"].items() if k not in ("seed", "noise_interval")}
    return {"model": resolved["model"], "hparams": resolved["hparams"], "budget": budget}


def evaluation_points(study: Any) -> np.ndarray:
    """The tokens at which every trial of `study` evaluates, each reached exactly by a whole
    number of steps at every batch size it can sample; UserError when they are not."""
    budget, ctx = study.budget, study.model.context_length
    batch = study.hparams.batch_size
    sizes = batch.options() if hasattr(batch, "options") else [batch]
    if budget.tokens is None or budget.eval_tokens is None or not isinstance(ctx, int):
        raise UserError("a curve table needs budget.tokens, budget.eval_tokens and a fixed "
                        "model.context_length")
    if budget.tokens % budget.eval_tokens:
        raise UserError(f"budget.tokens {budget.tokens} is no multiple of budget.eval_tokens "
                        f"{budget.eval_tokens}: the last evaluation would fall between two")
    uneven = [b for b in sizes if budget.eval_tokens % (b * ctx)]
    if uneven:
        raise UserError(f"budget.eval_tokens {budget.eval_tokens} is no multiple of B·context at "
                        f"B {', '.join(map(str, uneven))}: trials of each B would evaluate at "
                        "other tokens")
    return np.arange(1, budget.tokens // budget.eval_tokens + 1) * budget.eval_tokens


@dataclass(frozen=True)
class CurveTable:
    """A loaded table: its arrays (`ARRAYS`), `meta`, and each configuration's unit coordinates."""

    path: Path
    sha256: str
    meta: dict[str, Any]
    params: np.ndarray
    tokens: np.ndarray
    steps: np.ndarray
    val_loss: np.ndarray
    train_loss: np.ndarray
    tokens_per_s: np.ndarray
    cpu_s: np.ndarray
    seed_sd: np.ndarray
    unit: np.ndarray  # N × D coordinates in the unit cube

    @property
    def space(self) -> dict[str, dict[str, Any]]:
        """The searched parameters, in column order, with their distributions (YAML form)."""
        return self.meta["space"]

    @property
    def final(self) -> np.ndarray:
        """N × S: each configuration's final val_loss for each seed (inf: it diverged)."""
        return diverged_as_inf(self.val_loss[:, :, -1])

    @property
    def mean_final(self) -> np.ndarray:
        """Each configuration's final val_loss, the mean of its seeds (inf if one diverged)."""
        return self.final.mean(axis=1)

    @property
    def pooled_seed_sd(self) -> float:
        """The seed sd pooled over the configurations whose seeds both completed."""
        finite = self.seed_sd[np.isfinite(self.seed_sd)]
        return float(np.sqrt(np.mean(finite ** 2))) if finite.size else math.nan

    def point(self, params: Mapping[str, Any]) -> np.ndarray:
        """A sample's coordinates in the unit cube (every column must be in `params`)."""
        return unit_point(self.space, params)

    def nearest(self, params: Mapping[str, Any]) -> int:
        """The configuration nearest to a sample in the unit cube (Euclidean; ties: the first)."""
        return int(np.argmin(((self.unit - self.point(params)) ** 2).sum(axis=1)))

    def seed_index(self, seed: int) -> int:
        """The table seed that a trial trained with `seed` (budget.seed) replays: seed mod 2."""
        return seed % SEEDS

    def lookup(self, params: Mapping[str, Any], seed: int) -> tuple[int, int]:
        """The configuration and the table seed whose curve answers the trial of sample `params`
        trained with `seed`: `val_loss[config, table_seed]` is its val_loss at `tokens`."""
        return self.nearest(params), self.seed_index(seed)

    def check_study(self, study: Any) -> None:
        """UserError naming the table and the first setting where `study` is not the study the
        table stands for (model, hyperparameters and their ranges, budget)."""
        check_same_study(self.path, self.meta["study"], study, "curve table")

    def check_dataset(self, sha256: str) -> None:
        """UserError naming the table when the study's dataset (its `dataset_sha256`) is not the
        one the table trained on."""
        if sha256 != self.meta["dataset_sha256"]:
            raise UserError(f"{self.path}: a curve table of another dataset (sha256 "
                            f"{self.meta['dataset_sha256'][:12]}…, the study's {sha256[:12]}…)")


def unit_point(space: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any]) -> np.ndarray:
    """A sample's coordinates in the unit cube of `space` (every column must be in `params`)."""
    return np.array([float(to_unit(dist, params[name])) for name, dist in space.items()])


def check_same_study(path: Path | None, key: Mapping[str, Any], study: Any, kind: str,
                     subspace: bool = False) -> None:
    """UserError naming the file at `path` (a `kind`) and the first setting where `study` is not
    the study of `key` (its `study_key`); with `subspace`, a hyperparameter may also be a part of
    the key's: a constant or a range inside its range, a choice of some of its values."""
    theirs = study_key(study)
    for section in key:
        for name in dict.fromkeys([*key[section], *theirs[section]]):
            mine, given = key[section].get(name), theirs[section].get(name)
            if mine != given and not (subspace and section == "hparams" and inside(given, mine)):
                part = " nor a part of it" if subspace and section == "hparams" else ""
                raise UserError(f"{path}: a {kind} of another study: its {section}.{name} is "
                                f"{json.dumps(mine)}, the study's {json.dumps(given)}{part}")


def inside(given: Any, mine: Any) -> bool:
    """Whether every value the study's setting `given` can take is one the key's `mine` holds:
    a constant in its range or among its choices, a range within its range, a choice of some
    of its values."""
    if not isinstance(mine, dict) or given is None:
        return given == mine
    (kind, values), = mine.items()
    if kind == "choice":
        options = given["choice"] if isinstance(given, dict) and "choice" in given else [given]
        return all(option in values for option in options)
    if kind not in ("uniform", "loguniform"):
        return False
    if isinstance(given, dict):
        (other, bounds), = given.items()
        return other in ("uniform", "loguniform") and values[0] <= bounds[0] <= bounds[1] <= values[1]
    return isinstance(given, int | float) and not isinstance(given, bool) and values[0] <= given <= values[1]


def diverged_as_inf(val_loss: np.ndarray) -> np.ndarray:
    """`val_loss` with a diverged run's NaN as inf, so that a mean over seeds with one is inf."""
    return np.where(np.isnan(val_loss), np.inf, val_loss)


def load(path: str | Path) -> CurveTable:
    """Read and check a table file; UserError naming it when it is missing, damaged, or not a
    table of this format."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such curve table file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the curve table ({err.strerror})") from None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}  # read whole: CRCs checked
        meta = json.loads(str(arrays.pop(META)))
    except Exception as err:  # noqa: BLE001 - zip, zlib, numpy's or JSON's: damaged, or not one
        raise UserError(f"{path}: not a curve table, or a damaged one "
                        f"({type(err).__name__}: {err})"[:400]) from None
    problem = _problem(meta, arrays)
    if problem:
        raise UserError(f"{path}: not a curve table of format {FORMAT}: {problem}")
    unit = np.stack([to_unit(dist, arrays["params"][:, i])
                     for i, dist in enumerate(meta["space"].values())], axis=1)
    return CurveTable(path=path, sha256=hashlib.sha256(raw).hexdigest(), meta=meta, unit=unit,
                      **{name: arrays[name] for name in ARRAYS})


def _problem(meta: Any, arrays: dict[str, np.ndarray]) -> str | None:
    """What is wrong with a table's contents (None: nothing)."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return f"its meta says format {meta.get('format') if isinstance(meta, dict) else None}"
    missing = [key for key in ("study", "space", "dataset_sha256", "provenance")
               if key not in meta] + [name for name in ARRAYS if name not in arrays]
    if missing:
        return f"it lacks {', '.join(missing)}"
    space = meta["space"]
    if not isinstance(space, dict) or any(
            not isinstance(d, dict) or len(d) != 1 or next(iter(d)) not in SUPPORTED
            for d in space.values()):
        return "its space is not a mapping of searched parameters to distributions"
    n, p = len(arrays["params"]), len(arrays["tokens"])
    sizes = {"N": n, "S": SEEDS, "P": p, "D": len(space)}
    for name, (kind, dims) in ARRAYS.items():
        shape = tuple(sizes[d] for d in dims)
        if arrays[name].dtype.kind != kind or arrays[name].shape != shape:
            return (f"{name} is {arrays[name].dtype} of shape {arrays[name].shape}, not "
                    f"{'float' if kind == 'f' else 'int'} of shape {shape}")
    if n == 0 or p == 0 or not np.all(np.diff(arrays["tokens"]) > 0):
        return "it holds no configuration, or its tokens do not grow"
    if not np.all(_whole_curves(arrays["val_loss"])):
        return "a curve of val_loss is not finite values to its end, or up to one inf"
    for i, (name, dist) in enumerate(space.items()):
        (kind, spec), = dist.items()
        column = arrays["params"][:, i]
        inside = (np.isin(column, spec) if kind == "choice"
                  else (column >= spec[0]) & (column <= spec[1]))
        if not np.all(inside):
            return f"its column {name} holds values outside {json.dumps(dist)}"
    return None


def _whole_curves(val_loss: np.ndarray) -> np.ndarray:
    """Whether each curve is finite at every point, or finite up to an inf (where it diverged)
    and NaN after (never evaluated)."""
    reached = ~np.isnan(val_loss)
    count = reached.sum(axis=-1)
    prefix = np.all(reached == (np.arange(val_loss.shape[-1]) < count[..., None]), axis=-1)
    ends = np.take_along_axis(val_loss, np.maximum(count - 1, 0)[..., None], axis=-1)[..., 0]
    infinite = np.isinf(val_loss).sum(axis=-1)
    return prefix & (count > 0) & (
        (infinite == 0) & (count == val_loss.shape[-1]) | (infinite == 1) & np.isinf(ends))


def save(path: str | Path, meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write a table whole (a temporary file renamed over `path`), compressed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            np.savez_compressed(out, **{name: arrays[name] for name in ARRAYS},
                                **{META: np.array(json.dumps(meta, ensure_ascii=False))})
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
