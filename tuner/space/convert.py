"""From a validated study to trials: the searched parameters in sampling order, Optuna
define-by-run sampling, grid enumeration, and one sample → a concrete `TrainConfig`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.config import (
    RELATIVE_HPARAMS,
    STUDY_RESOURCE_KEYS,
    ConfigError,
    HParam,
    ModelConfig,
    TrainConfig,
)
from tuner.errors import UserError
from tuner.space.distributions import Distribution, Grid, fmt
from tuner.space.params import ALL_DEFS, BUDGET_DEFS, BUDGET_NAMES, HPARAM_DEFS, MODEL_DEFS

if TYPE_CHECKING:
    from optuna.trial import BaseTrial

    from tuner.space.sections import StudySections


def value(study: StudySections, name: str) -> Any:
    """A parameter's value in the study (given or default): a constant or a Distribution."""
    return getattr(study.model if name in MODEL_DEFS else study.hparams, name)


def candidates(study: StudySections, name: str) -> list[Any] | None:
    """Every value the parameter can take when finite, else None."""
    v = value(study, name)
    return v.options() if isinstance(v, Distribution) else [v]


def span(study: StudySections, name: str) -> tuple[float, float] | None:
    """Smallest and largest numeric value of the parameter (None: it is not a number, e.g. off)."""
    v = value(study, name)
    if isinstance(v, Distribution):
        return v.span()
    return None if v is None else (v, v)


def searched(study: StudySections) -> dict[str, Distribution]:
    """Readable name → distribution, ordered so that each condition's parent comes first."""
    space = {**study.model.searched(), **study.hparams.searched()}
    return dict(sorted(space.items(), key=lambda item: _depth(item[0])))


def _depth(name: str) -> int:
    when = ALL_DEFS[name].when
    return 0 if when is None else 1 + _depth(when[0])


def transfer(study: StudySections) -> tuple[str, list[int]] | None:
    """The model field a transfer study trains every sample at each size of, and those sizes."""
    listed = study.model.transferred()
    return next(((name, dist.options()) for name, dist in listed.items()), None)


def sizes_per_sample(study: StudySections) -> int:
    """The trials each sample makes: one per transfer size, else one."""
    sizes = transfer(study)
    return len(sizes[1]) if sizes else 1


def is_active(study: StudySections, name: str, assignment: dict[str, Any]) -> bool:
    """Whether the parameter is used, given the values sampled so far (its `when` condition)."""
    when = ALL_DEFS[name].when
    if when is None:
        return True
    parent, values = when
    return assignment.get(parent, value(study, parent)) in values


def used(study: StudySections, params: dict[str, Any]) -> dict[str, Any]:
    """The sampled values the trainer uses: those whose condition holds (PBT draws them all)."""
    return {name: v for name, v in params.items()
            if name not in ALL_DEFS or is_active(study, name, params)}


def sample(study: StudySections, trial: BaseTrial) -> dict[str, Any]:
    """Suggest every searched parameter whose condition holds; return the suggested values."""
    params: dict[str, Any] = {}
    for name, dist in searched(study).items():
        if is_active(study, name, params):
            params[name] = dist.suggest(trial, name)
    return params


def grid_points(study: StudySections) -> list[dict[str, Any]]:
    """Every combination of grid values; a conditional parameter only where its parent allows."""
    return list(iter_grid(study))


def iter_grid(study: StudySections) -> Iterator[dict[str, Any]]:
    """The grid's points one at a time (the first parameter varies slowest): a grid too large to
    hold is counted up to a limit without building it."""
    space = list(searched(study).items())
    others = [name for name, dist in space if not isinstance(dist, Grid)]
    if others:
        raise UserError("a grid needs every searched parameter as {grid: [...]}; not: "
                        + ", ".join(others))

    def extend(point: dict[str, Any], index: int) -> Iterator[dict[str, Any]]:
        if index == len(space):
            yield point
            return
        name, dist = space[index]
        if not is_active(study, name, point):
            yield from extend(point, index + 1)
            return
        for value in dist.options():
            yield from extend({**point, name: value}, index + 1)

    return extend({}, 0)


def steps_range(study: StudySections) -> tuple[int, int]:
    """Fewest and most optimizer steps (T_total) a full trial can have."""
    if study.budget.total_iters is not None:
        return study.budget.total_iters, study.budget.total_iters
    (b_lo, b_hi), (c_lo, c_hi) = span(study, "batch_size"), span(study, "context_length")
    tokens = study.budget.tokens
    return math.ceil(tokens / (b_hi * c_hi)), math.ceil(tokens / (b_lo * c_lo))


def tokens_range(study: StudySections) -> tuple[int, int]:
    """Fewest and most tokens a full trial trains on."""
    if study.budget.tokens is not None:
        return study.budget.tokens, study.budget.tokens
    (b_lo, b_hi), (c_lo, c_hi) = span(study, "batch_size"), span(study, "context_length")
    steps = study.budget.total_iters
    return int(steps * b_lo * c_lo), int(steps * b_hi * c_hi)


def trial_config(study: StudySections, params: dict[str, Any], data_dir: Path | str) -> TrainConfig:
    """The study's constants with `params` applied, as a validated TrainConfig."""
    sizes = transfer(study)
    unknown = sorted(set(params) - set(searched(study)) - {sizes[0] if sizes else None})
    if unknown:
        raise UserError(f"trial parameters {', '.join(unknown)} are not searched by study "
                        f"{study.name}")
    params = used(study, params)
    model = {**_constants(study.model), **{k: v for k, v in params.items() if k in MODEL_DEFS}}
    if sizes:
        field, values = sizes
        model.setdefault(field, values[0])
        if field == "d_model" and model.get("parametrization") == "mup":
            model.setdefault("mup_base_d_model", values[0])  # the proxy's width is μP's base
    train = {**_constants(study.hparams), **{k: v for k, v in params.items() if k in HPARAM_DEFS}}
    floor = RELATIVE_HPARAMS["lr_min"]
    if "lr_min" not in train:  # record α_min as a number, not as "0.1·α_max by default"
        train.setdefault(floor.name, floor.default)
    budget = {BUDGET_NAMES[k]: v for k, v in study.budget.model_dump().items()
              if v is not None and _applies(BUDGET_DEFS[k], train)}  # no forks without wsd
    res = study.resources
    runtime = {key: getattr(res, key) for key in STUDY_RESOURCE_KEYS}
    if res.device == "auto" and res.gpus_per_trial == 0:
        runtime["device"] = "cpu"  # Ray shows a trial without GPUs every GPU of its node
    try:
        config = TrainConfig(model=ModelConfig(**model), data=str(data_dir), **runtime, **budget,
                             **train)
        config.validate()
    except ConfigError as err:
        shown = ", ".join(f"{k}={fmt(v)}" for k, v in params.items())
        raise UserError(f"trial ({shown}) is invalid: {err}") from None
    return config


def _applies(hp: HParam, train: dict[str, Any]) -> bool:
    """Whether a budget setting's condition holds for the trial's hyperparameters `train`."""
    return hp.when is None or train.get(hp.when[0], HPARAM_DEFS[hp.when[0]].default) in hp.when[1]


def _constants(section: Any) -> dict[str, Any]:
    return {k: v for k, v in section.given().items() if not isinstance(v, Distribution)}
