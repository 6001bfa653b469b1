"""torch.compile across the runs of one process (a Ray actor's trials): a run whose graphs an
earlier run compiled takes them as they are, and torch's compiler is reset only to make room.

torch's guards decide what recompiles: what a graph bakes in (the model's shape and constants,
p_drop, the batch's shape, the kernels' settings). A hyperparameter of the optimizer or the
schedule (α, β1, β2, ε, λ, τ, T_warmup) is no part of the graph and never recompiles it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from model.config import TrainConfig

KEPT_GRAPH_SETS = 4  # a run's graph sets kept in a process: lm.yaml's four batch sizes
GRAPHS_PER_SET = 3  # training step, evaluation, and its last batch when it is shorter

_kept: set[tuple[Any, ...]] = set()


def compiles(config: TrainConfig, device: torch.device) -> bool:
    """Whether the run is compiled: `auto` compiles on CUDA, where it trains about 1.8x the
    tokens/s, and not on the CPU, where compiling takes longer than short runs save."""
    return device.type == "cuda" if config.compile == "auto" else bool(config.compile)


def graph_key(config: TrainConfig) -> tuple[Any, ...]:
    """What the run's graphs bake in; runs with equal keys share them."""
    return (tuple(dataclasses.astuple(config.model)), config.batch_size, config.eval_windows,
            config.dropout, config.fast, config.deterministic, config.device)


def compiled(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """`model` compiled for static shapes (as a new process compiles it, so a replay runs the same
    kernels), reusing this process's graphs of an equal key; torch's compiler is reset when a new
    key would pass its recompile limit, past which a run would go eager."""
    import torch

    limit = torch._dynamo.config
    limit.recompile_limit = max(limit.recompile_limit, KEPT_GRAPH_SETS * GRAPHS_PER_SET)
    key = graph_key(config)
    if key not in _kept:
        if len(_kept) >= limit.recompile_limit // GRAPHS_PER_SET:
            torch._dynamo.reset()
            _kept.clear()
        _kept.add(key)
    return torch.compile(model, dynamic=False)


def compile_seconds() -> float:
    """Seconds this process has spent compiling (torch's own count: Dynamo's forward graphs and
    the backward graphs compiled at their first use); 0 before anything compiled."""
    import sys

    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None:
        return 0.0
    spent = utils.compilation_time_metrics
    return sum(sum(spent.get(name, ())) for name in ("_compile.compile_inner",
                                                      "backward._backward_impl"))
