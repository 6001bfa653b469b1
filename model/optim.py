"""Optimizers of the trainer (torch.optim where it has them, LARS by hand) and gradient clipping."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from model import mup
from model.config import TrainConfig

_FUSED = (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD, torch.optim.Adagrad)


def _split(model: torch.nn.Module, decay_all: bool) -> tuple[list[Tensor], list[Tensor]]:
    """(decayed, not decayed) trainable parameters: matrices decay, embeddings and gains don't."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            decays = decay_all or (p.ndim >= 2 and "embedding" not in name)
            (decay if decays else keep).append(p)
    return decay, keep


def param_groups(model: torch.nn.Module, weight_decay: float,
                 decay_all: bool = False) -> list[dict]:
    """Weight decay on matrices except embeddings (on everything if decay_all); no empty groups."""
    halves = zip(_split(model, decay_all), (weight_decay, 0.0), strict=True)
    return [{"params": ps, "weight_decay": wd} for ps, wd in halves if ps]


def mup_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """`param_groups` with μP's hidden matrices apart, their α and λ scaled by width."""
    hidden = {id(p) for p in model.hidden_matrices()}
    groups = []
    for group in param_groups(model, cfg.weight_decay, cfg.decay_all):
        inner = [p for p in group["params"] if id(p) in hidden]
        if inner:
            groups.append({**group, "params": inner, "lr_scale": mup.hidden_lr_scale(cfg.model),
                           "weight_decay": group["weight_decay"] * mup.hidden_decay_scale(
                               cfg.model)})
        rest = [p for p in group["params"] if id(p) not in hidden]
        if rest:
            groups.append({**group, "params": rest})
    return groups


def _lars_groups(model: torch.nn.Module, weight_decay: float, decay_all: bool = False
                ) -> list[dict]:
    """`param_groups` split again for LARS: the trust ratio scales every matrix, embeddings
    included, and no gain or bias (1-D tensors); no empty groups."""
    groups = [{**group, "params": [p for p in group["params"] if (p.ndim >= 2) == trust],
               "trust_ratio": trust}
              for group in param_groups(model, weight_decay, decay_all) for trust in (True, False)]
    return [group for group in groups if group["params"]]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017) with heavy-ball momentum, per tensor.

    g ← g + λθ; local_lr = η·‖θ‖/(‖g‖ + ε), or 1 if either norm is 0; v ← γ·v + local_lr·g;
    θ ← θ − lr·v.
    Groups with `trust_ratio=False` use local_lr = 1: standard LARS practice for norm gains and
    biases, which `_lars_groups` puts there (the trust ratio is kept even when λ = 0, where LARS
    would otherwise be plain momentum SGD).
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, trust_coefficient: float = 0.001, eps: float = 1e-8):
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "trust_coefficient": trust_coefficient, "eps": eps, "trust_ratio": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient; returns closure() if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["trust_ratio"]:
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    ratio = group["trust_coefficient"] * p_norm / (g_norm + group["eps"])
                    g = g * torch.where((p_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                v = state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(v, alpha=-group["lr"])
        return loss


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` over `param_groups(model, λ, decay_all)` (`mup_groups`
    under μP), lr = cfg.lr_max."""
    if cfg.optimizer == "lars":
        groups = _lars_groups(model, cfg.weight_decay, cfg.decay_all)
        return LARS(groups, lr=cfg.lr_max, momentum=cfg.momentum, trust_coefficient=cfg.lars_trust)
    groups = (mup_groups(model, cfg) if cfg.model.parametrization == "mup"
              else param_groups(model, cfg.weight_decay, cfg.decay_all))
    adam = {"betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    cls, options = {
        "adamw": (torch.optim.AdamW, adam),
        "adam": (torch.optim.Adam, adam),
        "sgd": (torch.optim.SGD, {"momentum": cfg.momentum}),
        "rmsprop": (torch.optim.RMSprop,
                    {"alpha": cfg.beta2, "eps": cfg.eps, "momentum": cfg.momentum}),
        "adagrad": (torch.optim.Adagrad, {"eps": cfg.eps}),
    }[cfg.optimizer]
    params = [p for group in groups for p in group["params"]]
    if cls in _FUSED and cfg.fast and params and all(p.is_cuda for p in params):
        options["fused"] = True
    return cls(groups, lr=cfg.lr_max, **options)


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float | None) -> Tensor:
    """Global L2 norm of the gradients before clipping, as a 0-dim tensor on their device (read
    it only when needed: on a GPU that waits for the backward pass); if τ is set, scale them by
    min(1, τ/(norm + 1e-6))."""
    params = [p for p in parameters if p.grad is not None]
    if max_norm is None:
        return torch.nn.utils.get_total_norm([p.grad for p in params])
    return torch.nn.utils.clip_grad_norm_(params, max_norm)
