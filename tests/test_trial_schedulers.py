"""PASHA's growing top rung and the one-epoch top-K baseline, driven result by result: what each
decides, and that a saved state decides the same after a restore."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from ray.tune.schedulers import TrialScheduler

from tuner.search.searchers.pasha import Pasha, consistent, noise
from tuner.search.searchers.topk import TopK

GO, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


@dataclass(frozen=True)
class Trial:
    """What the schedulers read of Tune's trial."""

    trial_id: str


def pasha() -> Pasha:
    """Rungs at 1, 2 and 4 tokens of a budget of 8; trials a to d added, as Tune adds them."""
    scheduler = Pasha(time_attr="tokens", metric="val_loss", mode="min", max_t=8, grace_period=1,
                      reduction_factor=2)
    for trial in "abcd":
        scheduler.on_trial_add(None, Trial(trial))
    return scheduler


def report(scheduler: TrialScheduler, trial: str, tokens: float, loss: float) -> str:
    return scheduler.on_trial_result(None, Trial(trial), {"tokens": tokens, "val_loss": loss})


def test_pasha_starts_at_the_second_rung_and_grows_when_the_top_two_disagree() -> None:
    """Trials stop at the second rung while the top two rungs rank them alike; one that overtakes
    another between them raises the top a rung, and goes on itself."""
    scheduler = pasha()
    assert scheduler.levels == [1, 2, 4, 8] and scheduler.max_budget == 2
    assert [report(scheduler, "a", 1, 3.0), report(scheduler, "a", 2, 2.0)] == [GO, STOP]
    assert [report(scheduler, "b", 1, 2.9), report(scheduler, "b", 2, 1.9)] == [GO, STOP]
    assert scheduler.max_budget == 2  # b is ahead of a at both rungs
    assert report(scheduler, "c", 1, 2.92) == GO
    assert report(scheduler, "c", 2, 1.0) == GO  # behind b at rung 1, ahead of both at rung 2
    assert scheduler.max_budget == 4
    assert report(scheduler, "c", 3, 0.9) == GO and report(scheduler, "c", 4, 0.8) == STOP


def test_pasha_at_the_full_budget_is_asha() -> None:
    """Once the top is the full budget, trials stop only by ASHA's rule and at its end."""
    scheduler = pasha()
    scheduler.top = len(scheduler.levels) - 1
    assert [report(scheduler, "a", t, 4.0 - t / 4) for t in (1, 2, 4, 8)] == [GO, GO, GO, STOP]
    assert report(scheduler, "b", 1, 5.0) == STOP  # below ASHA's cutoff at the first rung


def test_soft_ranking_forgives_swaps_within_the_noise() -> None:
    """Two trials swapped by less than ε at the rung below keep the top; by more, they do not."""
    top, below = {"a": -1.0, "b": -1.1}, {"a": -2.0, "b": -1.95}
    assert consistent(top, below, 0.1) and not consistent(top, below, 0.0)
    assert consistent({"a": -1.0}, {"a": -2.0}, 0.0)


def test_noise_is_the_gap_of_pairs_whose_order_flipped_and_flipped_back() -> None:
    """ε from the curves: a pair that swapped and swapped back between evaluations counts with
    its gap at its latest evaluation inside the top two rungs; a pair that swapped once does not."""
    curves = {"a": {1: -3.0, 2: -2.0, 3: -1.0}, "b": {1: -3.1, 2: -1.9, 3: -1.2},
              "c": {1: -2.5, 2: -2.1, 3: -1.5}}
    # a>b at 3 and 1, b>a at 2: gap 0.2; a>c at 3 and 2, c>a at 1: swapped once; b, c alike
    assert noise(curves, 2, 3, 0.05) == pytest.approx(0.2)
    assert noise({"a": curves["a"], "c": curves["c"]}, 2, 3, 0.05) == 0.05
    assert noise(curves, 3, 4, 0.05) == 0.05  # no evaluation inside (3, 4]


def test_pasha_decides_the_same_after_a_save_and_restore(tmp_path: Path) -> None:
    """Its rungs, curves, ε and top come back from a save, as a resumed study's."""
    scheduler = pasha()
    for trial, losses in (("a", (3.0, 2.0)), ("b", (2.9, 1.9)), ("c", (2.92, 1.0))):
        for tokens, loss in zip((1, 2), losses, strict=True):
            report(scheduler, trial, tokens, loss)
    scheduler.save(str(tmp_path / "state"))
    restored = pasha()
    restored.restore(str(tmp_path / "state"))
    assert (restored.max_budget, restored.curves) == (4, scheduler.curves)
    assert report(restored, "c", 4, 0.8) == report(scheduler, "c", 4, 0.8) == STOP
    assert report(restored, "d", 1, 9.0) == report(scheduler, "d", 1, 9.0) == STOP


def test_topk_lets_a_trial_on_only_among_the_k_best_at_the_budget(tmp_path: Path) -> None:
    """k 2 at 4 tokens: the first two go on, a better third does, a worse or tied one stops;
    results before the budget, and a trial's after its decision, never stop it."""
    scheduler = TopK(time_attr="tokens", metric="val_loss", mode="min", budget=4, k=2)
    assert report(scheduler, "a", 2, 9.0) == GO
    assert [report(scheduler, t, 4, loss) for t, loss in (("a", 3.0), ("b", 2.0), ("c", 1.0),
                                                          ("d", 4.0), ("e", 2.0))] == [
        GO, GO, GO, STOP, STOP]
    assert report(scheduler, "a", 8, 3.5) == GO  # decided at 4 tokens, though now third
    scheduler.save(str(tmp_path / "state"))
    restored = TopK(time_attr="tokens", metric="val_loss", mode="min", budget=4, k=2)
    restored.restore(str(tmp_path / "state"))
    assert [report(restored, "f", 5, 1.5), report(restored, "g", 5, 2.5)] == [GO, STOP]


def test_the_driver_keeps_both_schedulers_state_for_a_resume() -> None:
    """StateBackup saves and puts back PASHA's state (ASHA's way) and top-K's."""
    from tuner.search.state.recovery import StateBackup

    topk = TopK(time_attr="tokens", metric="val_loss", mode="min", budget=4, k=2)
    scheduler = pasha()
    assert StateBackup(scheduler).scheduler is scheduler and StateBackup(topk).scheduler is topk
