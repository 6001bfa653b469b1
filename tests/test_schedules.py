"""Learning-rate schedules: the CS336 cosine, each shape with warmup, plateau, WSD, and
checkpointing."""

from __future__ import annotations

import io
import math
from itertools import pairwise

import pytest
import torch

from model.config import SCHEDULES, ConfigError, TrainConfig
from model.schedules import LRSchedule, cosine_lr, set_lr

# The CS336 assignment-1 reference (test_get_lr_cosine_schedule); t = 20 is 0.1112824395..., the
# value 0.11128240951817937 in the team brief was a typo.
CS336_EXPECTED = [
    0, 0.14285714285714285, 0.2857142857142857, 0.42857142857142855, 0.5714285714285714,
    0.7142857142857143, 0.8571428571428571, 1.0, 0.9887175604818206, 0.9554359905560885,
    0.9018241671106134, 0.8305704108364301, 0.7452476826029011, 0.6501344202803414, 0.55,
    0.44986557971965857, 0.3547523173970989, 0.26942958916356996, 0.19817583288938662,
    0.14456400944391146, 0.11128243951817937, 0.1, 0.1, 0.1, 0.1,
]


def schedule(kind: str, **overrides: object) -> LRSchedule:
    """The schedule of a 100-step run with lr_max = 1 (lr_min defaults to 0.1)."""
    cfg = TrainConfig(data="x", total_iters=100, lr_max=1.0, schedule=kind, **overrides)
    return LRSchedule.from_config(cfg)


def test_cosine_lr_matches_cs336_reference() -> None:
    got = [cosine_lr(t, 1.0, 0.1, 7, 21) for t in range(25)]
    assert got == pytest.approx(CS336_EXPECTED, abs=1e-12)


def test_from_config_defaults() -> None:
    s = schedule("cosine")
    assert (s.lr_min, s.cycle_iters, s.exp_steps) == (pytest.approx(0.1), 100, 100)
    assert schedule("cosine", lr_min=0.0, cycle_iters=50).lr(50) == 0.0


@pytest.mark.parametrize("kind", SCHEDULES)
def test_warmup_composes_with_every_shape(kind: str) -> None:
    s = schedule(kind, warmup_iters=10, cycle_iters=60)
    assert [s.lr(t) for t in range(10)] == pytest.approx([t / 10 for t in range(10)])
    assert s.lr(10) == pytest.approx(1.0)


def test_cosine_schedule_is_the_formula() -> None:
    s = schedule("cosine", lr_min=0.1, warmup_iters=7, cycle_iters=21)
    assert [s.lr(t) for t in range(25)] == pytest.approx(CS336_EXPECTED, abs=1e-12)
    default = schedule("cosine", warmup_iters=5)
    lrs = [default.lr(t) for t in range(5, 101)]
    assert all(a >= b for a, b in pairwise(lrs))
    assert lrs[-1] == pytest.approx(0.1)


def test_constant_stays_at_lr_max() -> None:
    s = schedule("constant", warmup_iters=3)
    assert {s.lr(t) for t in range(3, 100)} == {1.0}


def test_cosine_restarts_jump_back_at_cycle_boundaries() -> None:
    s = schedule("cosine_restarts", warmup_iters=5, cycle_iters=15)  # cycles of 10 steps
    for start in (5, 15, 25, 35):
        cycle = [s.lr(t) for t in range(start, start + 10)]
        assert cycle[0] == pytest.approx(1.0)
        assert all(a > b for a, b in pairwise(cycle))
        assert cycle[-1] > 0.1 and cycle[-1] == pytest.approx(0.1, abs=0.03)
        assert s.lr(start + 5) == pytest.approx(0.55)  # the cosine's midpoint


def test_cosine_restarts_cycles_grow_by_cycle_mult() -> None:
    s = schedule("cosine_restarts", warmup_iters=5, cycle_iters=15, cycle_mult=2.0)
    starts = [5, 15, 35, 75]  # cycle lengths 10, 20, 40
    for start in starts:
        assert s.lr(start) == pytest.approx(1.0)
    for end in starts[1:]:
        assert s.lr(end - 1) < 0.2
    for start, end in pairwise(starts):
        lrs = [s.lr(t) for t in range(start, end)]
        assert all(a > b for a, b in pairwise(lrs))
    assert s.lr(25) == pytest.approx(0.55)  # midpoint of the 20-step cycle


def test_step_schedule_values() -> None:
    s = schedule("step", step_size=10, step_gamma=0.5, warmup_iters=4)
    assert s.lr(4) == s.lr(13) == 1.0
    assert s.lr(14) == 0.5
    assert s.lr(34) == 0.125
    assert s.lr(99) == pytest.approx(0.5**9)  # no floor at lr_min


def test_exponential_schedule_values() -> None:
    s = schedule("exponential", exp_rate=0.1, exp_steps=50)
    assert s.lr(50) == pytest.approx(0.1)
    assert s.lr(25) == pytest.approx(math.sqrt(0.1))
    assert s.lr(100) == pytest.approx(0.01)
    assert schedule("exponential", exp_rate=0.1).lr(100) == pytest.approx(0.1)  # T_exp = T_total


def test_non_plateau_schedules_ignore_observe() -> None:
    s = schedule("step", step_size=10)
    for _ in range(10):
        s.observe(5.0, 50)
    assert s.lr(50) == pytest.approx(1e-5)


def test_plateau_cuts_after_patience() -> None:
    s = schedule("plateau", plateau_patience=2, plateau_factor=0.5)
    for loss in (3.0, 2.0, 2.5, 2.1):  # improvement, then two evaluations without: tolerated
        s.observe(loss, 50)
        assert s.lr(50) == 1.0
    s.observe(2.0, 50)  # equal is not an improvement: the third bad evaluation cuts
    assert s.lr(50) == 0.5
    s.observe(1.0, 50)
    s.observe(1.5, 50)
    s.observe(1.5, 50)
    assert s.lr(50) == 0.5
    s.observe(1.5, 50)
    assert s.lr(50) == 0.25


def test_plateau_ignores_evaluations_inside_the_warmup() -> None:
    """A stall while α still ramps up is no plateau: counting starts at the warmup's end."""
    s = schedule("plateau", plateau_patience=0, plateau_factor=0.5, warmup_iters=10)
    for t in (2, 4, 6, 8):
        s.observe(3.0, t)
    assert s.lr(10) == 1.0 and s.state_dict()["bad_evals"] == 0
    s.observe(3.0, 10)  # the first evaluation that counts sets the best
    assert s.lr(12) == 1.0
    s.observe(3.0, 12)
    assert s.lr(14) == 0.5


def test_plateau_patience_zero_cuts_on_every_stall() -> None:
    s = schedule("plateau", plateau_patience=0, plateau_factor=0.5)
    for loss, lr in ((3.0, 1.0), (3.0, 0.5), (2.0, 0.5), (2.5, 0.25)):
        s.observe(loss, 50)
        assert s.lr(50) == lr


def test_plateau_cooldown_ignores_evaluations_after_a_cut() -> None:
    s = schedule("plateau", plateau_patience=1, plateau_factor=0.5, plateau_cooldown=2)
    lrs = []
    for _ in range(9):
        s.observe(1.0, 50)
        lrs.append(s.lr(50))
    # eval 1 sets best; evals 2, 3 are bad → cut; evals 4, 5 are cooldown; 6, 7 bad → cut; ...
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]


def test_plateau_never_goes_below_lr_min() -> None:
    s = schedule("plateau", plateau_patience=0, plateau_factor=0.5, lr_min=0.3)
    for _ in range(10):
        s.observe(1.0, 50)
    assert s.lr(50) == 0.3


def test_a_damaged_count_of_cuts_loads_at_the_floor_or_fails() -> None:
    """A huge count (a damaged checkpoint) stops cutting at α_min instead of looping for ever; a
    negative one is refused."""
    s = schedule("plateau", plateau_factor=0.5, lr_min=0.3)
    s.load_state_dict({"cuts": 10**30, "best": 1.0, "bad_evals": 0, "cooldown_left": 0})
    assert (s.lr(50), s.cuts) == (0.3, 10**30)
    with pytest.raises(ValueError, match="cuts -1 is below 0"):
        s.load_state_dict({"cuts": -1, "best": 1.0, "bad_evals": 0, "cooldown_left": 0})


def test_state_dict_round_trip_through_weights_only_checkpoint() -> None:
    a = schedule("plateau", plateau_patience=1, plateau_cooldown=1)
    for loss in (2.0, 2.0, 2.0, 1.5, 1.6):
        a.observe(loss, 50)
    state = a.state_dict()
    assert all(type(v) in (int, float) for v in state.values())
    buffer = io.BytesIO()
    torch.save({"schedule": state}, buffer)
    buffer.seek(0)
    b = schedule("plateau", plateau_patience=1, plateau_cooldown=1)
    b.load_state_dict(torch.load(buffer, weights_only=True)["schedule"])
    assert b.state_dict() == state
    for loss in (1.6, 1.7, 1.7, 1.2, 1.3, 1.3, 1.3):
        a.observe(loss, 50)
        b.observe(loss, 50)
        assert a.lr(50) == b.lr(50)
    assert a.lr(50) < 0.5


def test_fresh_state_dict_loads_with_weights_only() -> None:
    buffer = io.BytesIO()
    torch.save(schedule("cosine").state_dict(), buffer)  # best = inf
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["best"] == math.inf


def test_set_lr_writes_every_group() -> None:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 3.0}], lr=1.0)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]


def test_plateau_cuts_apply_to_the_resumed_config() -> None:
    """A resume with another α_max (a PBT perturbation) keeps the cuts, not the old lr; from a
    checkpoint written before cuts were counted, they are counted from its lr."""
    a = schedule("plateau", plateau_patience=0, plateau_factor=0.5, lr_min=0.01)
    for _ in range(3):
        a.observe(1.0, 50)  # best, then two cuts
    assert a.lr(50) == 0.25
    b = LRSchedule.from_config(TrainConfig(data="x", total_iters=100, lr_max=0.4, lr_min=0.01,
                                           schedule="plateau", plateau_patience=0))
    b.load_state_dict(a.state_dict())
    assert b.lr(50) == 0.1 and b.state_dict() == a.state_dict()
    old = {"plateau_lr": 0.1, "best": 1.0, "bad_evals": 0, "cooldown_left": 0}
    b.load_state_dict(old)
    assert (b.lr(50), b.state_dict()["cuts"]) == (0.1, 2)


@pytest.mark.parametrize("shape", ["1-sqrt", "linear"])
def test_wsd_warms_up_holds_then_decays_to_lr_min(shape: str) -> None:
    """T_total 100, f_decay 0.25: warmup to step 10, α_max until step 75, then the decay's shape
    down to α_min at T_total."""
    s = schedule("wsd", warmup_iters=10, decay_fraction=0.25, decay_shape=shape, lr_min=0.1)
    assert [s.lr(t) for t in range(10)] == pytest.approx([t / 10 for t in range(10)])
    assert {s.lr(t) for t in range(10, 76)} == {1.0}
    decay = [s.lr(t) for t in range(75, 101)]
    assert all(a > b for a, b in pairwise(decay))
    assert s.lr(100) == 0.1
    halfway = 0.1 + 0.9 * (1 - math.sqrt(0.5)) if shape == "1-sqrt" else 0.55
    assert s.lr(75 + 25 // 2) == pytest.approx(halfway, abs=0.9 / 25)
    assert schedule("wsd", decay_fraction=0.5, decay_shape=shape).lr(75) == pytest.approx(halfway)


def test_wsd_defaults_and_a_decay_inside_the_warmup_is_refused() -> None:
    s = schedule("wsd")  # f_decay 0.2, 1-sqrt, α_min 0.1·α_max
    assert (s.decay_iters, s.decay_shape, s.lr(80), s.lr(100)) == (20, "1-sqrt", 1.0,
                                                                   pytest.approx(0.1))
    cfg = TrainConfig(data="x", total_iters=100, schedule="wsd", warmup_iters=90)
    with pytest.raises(ConfigError, match="decay_fraction: WSD's decay starts at step 80"):
        cfg.validate()


def test_a_short_training_run_with_wsd(byte_dataset) -> None:
    """A run trains under WSD with μP's per-group scales: each step's α follows the schedule."""
    from model.config import ModelConfig
    from model.train import train

    model = ModelConfig(vocab_size=256, context_length=32, d_model=32, num_layers=1, num_heads=4,
                        parametrization="mup", mup_base_d_model=16)
    config = TrainConfig(model=model, data=str(byte_dataset), lr_max=1e-2, warmup_iters=4,
                         total_iters=30, batch_size=8, eval_interval=10, eval_windows=8,
                         device="cpu", schedule="wsd", decay_fraction=0.5, lr_min=0.0)
    result = train(config)
    assert result.status == "completed"
    assert [r.lr for r in result.records] == pytest.approx([1e-2, 1e-2 * (1 - math.sqrt(4 / 15)),
                                                            1e-2 * (1 - math.sqrt(14 / 15))])
    assert result.records[-1].val_loss < result.records[0].val_loss
