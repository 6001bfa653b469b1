"""Optimizers, param groups and gradient clipping of model/optim.py."""

from __future__ import annotations

import io

import pytest
import torch

from model.config import OPTIMIZERS, TrainConfig
from model.optim import LARS, build_optimizer, clip_grad_norm, param_groups


class Tiny(torch.nn.Module):
    """Embedding → linear with bias → gain → head: every kind of parameter the LM has."""

    def __init__(self) -> None:
        super().__init__()
        self.token_embeddings = torch.nn.Embedding(8, 4)
        self.proj = torch.nn.Linear(4, 4)
        self.gain = torch.nn.Parameter(torch.ones(4))
        self.lm_head = torch.nn.Linear(4, 3, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.gain * self.proj(self.token_embeddings(ids)))


def regression(model: Tiny) -> torch.Tensor:
    """Mean squared error to a fixed target: a simple loss every optimizer should reduce."""
    weight = model.lm_head.weight  # the target takes its device and dtype (float64 in a test)
    ids = torch.arange(8, device=weight.device)
    target = torch.linspace(-1, 1, 24, device=weight.device, dtype=weight.dtype).reshape(8, 3)
    return torch.nn.functional.mse_loss(model(ids), target)


def names(model: torch.nn.Module, params: list[torch.Tensor]) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def test_param_groups_decay_matrices_only_by_default() -> None:
    model = Tiny()
    decay, keep = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    assert names(model, decay["params"]) == {"proj.weight", "lm_head.weight"}
    assert names(model, keep["params"]) == {"token_embeddings.weight", "proj.bias", "gain"}


def test_param_groups_decay_all() -> None:
    model = Tiny()
    (group,) = param_groups(model, 0.1, decay_all=True)
    assert group["weight_decay"] == 0.1
    assert names(model, group["params"]) == {n for n, _ in model.named_parameters()}


def test_param_groups_drop_empty_and_frozen() -> None:
    model = torch.nn.Module()
    model.gain = torch.nn.Parameter(torch.ones(3))
    model.frozen = torch.nn.Parameter(torch.ones(3, 3), requires_grad=False)
    (group,) = param_groups(model, 0.1)
    assert group["weight_decay"] == 0.0 and group["params"] == [model.gain]


LRS = {"adamw": 0.02, "adam": 0.02, "sgd": 0.05, "rmsprop": 0.005, "adagrad": 0.1, "lars": 0.5}


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_every_optimizer_builds_and_reduces_a_loss(kind: str) -> None:
    torch.manual_seed(0)
    model = Tiny()
    cfg = TrainConfig(data="x", total_iters=100, optimizer=kind, lr_max=LRS[kind],
                      weight_decay=0.01, lars_trust=0.01)
    opt = build_optimizer(model, cfg)
    assert all(g["lr"] == cfg.lr_max for g in opt.param_groups)
    assert not opt.defaults.get("fused")  # CPU parameters: the default (foreach) path
    first = regression(model).item()
    for _ in range(50):
        opt.zero_grad()
        loss = regression(model)
        loss.backward()
        opt.step()
    assert regression(model).item() < 0.5 * first


def test_optimizers_get_the_config_hyperparameters() -> None:
    def build(kind: str) -> torch.optim.Optimizer:
        cfg = TrainConfig(data="x", total_iters=100, optimizer=kind, lr_max=0.3, beta1=0.8,
                          beta2=0.95, eps=1e-6, momentum=0.7, weight_decay=0.05, lars_trust=0.02)
        return build_optimizer(Tiny(), cfg)

    adamw, adam = build("adamw"), build("adam")
    assert isinstance(adamw, torch.optim.AdamW) and type(adam) is torch.optim.Adam
    for opt in (adamw, adam):
        assert opt.param_groups[0]["betas"] == (0.8, 0.95) and opt.param_groups[0]["eps"] == 1e-6
        assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert not adam.param_groups[0]["decoupled_weight_decay"]
    sgd = build("sgd").param_groups[0]
    assert sgd["momentum"] == 0.7 and sgd["lr"] == 0.3
    rms = build("rmsprop").param_groups[0]
    assert (rms["alpha"], rms["eps"], rms["momentum"]) == (0.95, 1e-6, 0.7)
    assert build("adagrad").param_groups[0]["eps"] == 1e-6
    lars = build("lars")
    assert [(g["weight_decay"], g["trust_ratio"]) for g in lars.param_groups] == [
        (0.05, True), (0.0, True), (0.0, False)]
    assert lars.param_groups[0]["momentum"] == 0.7
    assert lars.param_groups[0]["trust_coefficient"] == 0.02


def test_lars_trusts_every_matrix_and_no_gain_or_bias() -> None:
    """The trust ratio scales the embeddings too (undecayed, they would otherwise take steps
    about 1/η larger than the other matrices), with or without λ and decay_all."""
    model = Tiny()
    for weight_decay, decay_all in ((0.0, False), (0.1, False), (0.1, True)):
        cfg = TrainConfig(data="x", total_iters=100, optimizer="lars", weight_decay=weight_decay,
                          decay_all=decay_all)
        groups = build_optimizer(model, cfg).param_groups
        trusted = {n for g in groups if g["trust_ratio"] for n in names(model, g["params"])}
        assert trusted == {"token_embeddings.weight", "proj.weight", "lm_head.weight"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_steps_on_cuda_when_fast() -> None:
    def fused(kind: str, fast: bool = True) -> bool:
        model = Tiny().cuda()
        opt = build_optimizer(model, TrainConfig(data="x", total_iters=100, optimizer=kind,
                                                 fast=fast))
        train(model, opt, 2)  # the fused kernels run
        return bool(opt.defaults.get("fused"))

    assert all(fused(kind) for kind in ("adamw", "adam", "sgd", "adagrad"))
    assert not fused("rmsprop") and not fused("adamw", fast=False)


def test_adamw_matches_the_symbols_formula() -> None:
    torch.manual_seed(0)
    model = Tiny().double()
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.95, 1e-8, 0.1
    cfg = TrainConfig(data="x", total_iters=100, optimizer="adamw", lr_max=lr, beta1=b1,
                      beta2=b2, eps=eps, weight_decay=wd)
    opt = build_optimizer(model, cfg)
    decayed = {"proj.weight", "lm_head.weight"}
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = {n: torch.zeros_like(p) for n, p in theta.items()}
    v = {n: torch.zeros_like(p) for n, p in theta.items()}
    for t in range(1, 4):
        opt.zero_grad()
        regression(model).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        for n, g in grads.items():
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g**2
            m_hat, v_hat = m[n] / (1 - b1**t), v[n] / (1 - b2**t)
            lam = wd if n in decayed else 0.0
            theta[n] = theta[n] - lr * (m_hat / (v_hat.sqrt() + eps) + lam * theta[n])
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), theta[n], rtol=1e-12, atol=1e-14)


def test_lars_trust_ratio_by_hand() -> None:
    theta = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))  # ‖θ‖ = 5
    opt = LARS([theta], lr=1.0, momentum=0.9, weight_decay=0.5, trust_coefficient=0.1, eps=0.0)
    theta.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    opt.step()
    # g' = g + 0.5·θ = (2.1, 2.8), ‖g'‖ = 3.5, local lr = 0.1·5/3.5 = 1/7, v = (0.3, 0.4)
    torch.testing.assert_close(theta.detach(), torch.tensor([2.7, 3.6], dtype=torch.float64))
    opt.step()
    # g' = (1.95, 2.6), ‖g'‖ = 3.25, ‖θ‖ = 4.5, local lr·g' = (0.27, 0.36), v = (0.54, 0.72)
    torch.testing.assert_close(theta.detach(), torch.tensor([2.16, 2.88], dtype=torch.float64))


def test_lars_zero_norm_and_excluded_groups_use_local_lr_one() -> None:
    zero = torch.nn.Parameter(torch.zeros(2))
    gain = torch.nn.Parameter(torch.ones(2))
    opt = LARS([{"params": [zero]}, {"params": [gain], "trust_ratio": False}], lr=0.1,
               momentum=0.5, trust_coefficient=0.001)
    zero.grad, gain.grad = torch.tensor([1.0, 2.0]), torch.tensor([1.0, -1.0])
    opt.step()  # ‖θ‖ = 0 for `zero`: a plain step θ − lr·g
    torch.testing.assert_close(zero.detach(), torch.tensor([-0.1, -0.2]))
    zero.grad = None
    opt.step()  # `gain` moved by 0.1·(1 + 1.5)·g: momentum SGD with the full lr
    torch.testing.assert_close(zero.detach(), torch.tensor([-0.1, -0.2]))
    torch.testing.assert_close(gain.detach(), torch.tensor([0.75, 1.25]))


def train(model: Tiny, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        regression(model).backward()
        opt.step()


def test_lars_state_dict_round_trip_continues_identically() -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(data="x", total_iters=100, optimizer="lars", lr_max=0.5, weight_decay=0.01)
    model = Tiny()
    opt = build_optimizer(model, cfg)
    train(model, opt, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = Tiny()
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = build_optimizer(resumed, cfg)
    resumed_opt.load_state_dict(checkpoint["optim"])
    train(model, opt, 3)
    train(resumed, resumed_opt, 3)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def params_with_grads() -> list[torch.nn.Parameter]:
    a, b, c = (torch.nn.Parameter(torch.zeros(n)) for n in (2, 1, 3))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])  # global norm 13; c has none
    return [a, b, c]


def test_clip_grad_norm_returns_pre_clip_norm_and_clips() -> None:
    params = params_with_grads()
    norm = clip_grad_norm(iter(params), 1.3)
    assert norm.dim() == 0 and norm.item() == pytest.approx(13.0)  # a tensor: read when needed
    clipped = torch.cat([params[0].grad, params[1].grad])
    assert torch.linalg.vector_norm(clipped).item() == pytest.approx(1.3, rel=1e-6)
    torch.testing.assert_close(clipped, torch.tensor([0.3, 0.4, 1.2]))
    assert params[2].grad is None


def test_clip_grad_norm_is_a_no_op_below_the_threshold() -> None:
    params = params_with_grads()
    assert clip_grad_norm(params, 100.0).item() == pytest.approx(13.0)
    assert params[0].grad.tolist() == [3.0, 4.0] and params[1].grad.tolist() == [12.0]


def test_clip_grad_norm_none_only_measures() -> None:
    params = params_with_grads()
    assert clip_grad_norm(params, None).item() == pytest.approx(13.0)
    assert params[0].grad.tolist() == [3.0, 4.0] and params[1].grad.tolist() == [12.0]
    assert clip_grad_norm([torch.nn.Parameter(torch.ones(2))], None).item() == 0.0
