"""Whether a study's trials fit in the memory each will have on this machine, checked before
anything starts, from `model.memory`'s floor of a training step: a space none of whose
configurations fits, or with a transfer size that cannot, is refused, and the searched values
that cannot fit are named."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuner.errors import UserError
from tuner.space.distributions import Distribution, fmt

SIZES = ("batch_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "vocab_size")
GIB = 2**30
PEAK_OVER_FLOOR = 2.0  # measured peaks run 1.5 to 2 times the floor (docs/benchmarks.md)
LARGEST_BATCH = 2**20  # B's own upper bound (model.config)


def check_memory(study: Any, cpus: float, warn: Callable[[str], None]) -> None:
    """UserError when even the space's smallest trial cannot fit in a trial's share of this
    machine's memory (a GPU's, or the RAM free now over the trials at once on `cpus` CPUs), or
    a transfer size alone cannot; `warn` names each searched size value that alone cannot fit."""
    have, where = memory_per_trial(study, cpus)
    sizes = _sizes(study)
    smallest = {name: min(_values(dist)) for name, dist in sizes.items()}
    floor = _floor(study, smallest)
    if floor is None:
        return
    shown = ", ".join(f"{name}={fmt(value)}" for name, value in smallest.items())
    if floor > have:
        raise UserError(
            f"resources: a trial{f' of the smallest configuration ({shown})' if shown else ''} "
            f"needs at least {floor / GIB:.1f} GiB to train, and has {have / GIB:.1f} GiB here "
            f"({where}); lower hparams.B, the context or the model's size, or run fewer trials "
            "at once (search.max_concurrent)")
    too_big = {name: [f"{name}={fmt(value)} (at least {need / GIB:.1f} GiB)"
                      for value in _values(dist)
                      if (need := _floor(study, {**smallest, name: value})) is not None
                      and need > have] for name, dist in sizes.items()}
    here = f"a trial has {have / GIB:.1f} GiB here ({where})"
    transferred = [name for name in study.model.transferred() if too_big.get(name)]
    transfers = [text for name in transferred for text in too_big[name]]
    if transfers:  # unlike a searched value, every sample trains at every transfer size
        fields = ", ".join(f"model.{name}" for name in transferred)
        raise UserError(f"{fields}: every sample trains at each transfer size, and these cannot "
                        f"fit even with every other size at its smallest: {', '.join(transfers)}"
                        f"; {here}. Drop them from the transfer list")
    searched = [text for name in study.searched() for text in too_big.get(name, [])]
    if searched:
        warn(f"{here}; these searched values cannot fit even with every other size at its "
             f"smallest: {', '.join(searched)}. Such trials are killed for memory, retried and "
             "recorded as failed")


def largest_batch(study: Any, cpus: float) -> tuple[int | None, str]:
    """The largest power-of-two B whose step fits a trial's memory here, its peak taken as
    PEAK_OVER_FLOOR times `model.memory`'s floor and the study's other sizes at their smallest
    (None: not even B = 1); and where that memory comes from."""
    import dataclasses

    have, where = memory_per_trial(study, cpus)
    smallest = {name: min(_values(dist)) for name, dist in _sizes(study).items()}
    try:
        config = study.trial_config(smallest, ".")  # B varies below, searched or not
    except UserError:
        return None, where
    largest, batch = None, 1
    while batch <= LARGEST_BATCH and PEAK_OVER_FLOOR * _step_floor(
            study, dataclasses.replace(config, batch_size=batch)) <= have:
        largest, batch = batch, 2 * batch
    return largest, where


def _sizes(study: Any) -> dict[str, Distribution]:
    """The searched and transferred sizes that matter for memory."""
    listed = {**study.searched(), **study.model.transferred()}  # a transfer's sizes too
    return {name: dist for name, dist in listed.items() if name in SIZES and _values(dist)}


def memory_per_trial(study: Any, cpus: float) -> tuple[int, str]:
    """Bytes a trial will have on this machine and where they come from."""
    res = study.resources
    if res.gpus_per_trial > 0 and res.device != "cpu":
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        return (int(total * min(res.gpus_per_trial, 1.0)),
                f"{fmt(res.gpus_per_trial)} of a {total / GIB:.0f} GiB GPU")
    from ray._private.utils import estimate_available_memory  # a container's limit, as Ray's

    available = estimate_available_memory()
    at_once = max(1, int(cpus // res.cpus_per_trial))
    if study.search.max_concurrent:
        at_once = min(at_once, study.search.max_concurrent)
    share = f"a share of {at_once} trials at once" if at_once > 1 else "one trial at a time"
    return available // at_once, f"{available / GIB:.1f} GiB of RAM available now, {share}"


def _values(dist: Distribution) -> list[Any]:
    """The values that matter for memory: each option, or a range's two ends."""
    options = dist.options()
    values = list(options) if options is not None else [dist.lo, dist.hi]
    return [value for value in values if isinstance(value, int) and not isinstance(value, bool)]


def _floor(study: Any, sizes: dict[str, Any]) -> int | None:
    """`model.memory`'s floor for the study with `sizes` applied; None where that combination is
    not a valid trial (its own check says why, when it is sampled)."""
    try:
        config = study.trial_config(sizes, ".")
    except UserError:
        return None
    return _step_floor(study, config)


def _step_floor(study: Any, config: Any) -> int:
    """`model.memory`'s floor of `config`'s step, on the study's device."""
    from model.memory import step_memory_floor

    return step_memory_floor(config, cuda=study.resources.gpus_per_trial > 0
                             and study.resources.device != "cpu")
