"""The surrogate of the table of curves (tuner.search.trial.surrogate): calibrated on rows it
was not fitted to, deterministic per (point, seed), saved and refused as a table is."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from curve_tables import BENCHMARKS, load_script

from tuner.errors import UserError
from tuner.search.trial import curve_table
from tuner.search.trial import surrogate as model
from tuner.space import load_study

calibration = load_script(BENCHMARKS / "surrogate_calibration.py", "surrogate_calibration")
TABLE = BENCHMARKS / "curves" / "cosine.npz"
SPACE = BENCHMARKS / "curves" / "space.yaml"


@pytest.fixture(scope="module")
def table() -> curve_table.CurveTable:
    return curve_table.load(TABLE)


@pytest.fixture(scope="module")
def small(table: curve_table.CurveTable) -> model.Surrogate:
    """A surrogate of the shipped table's first 128 rows."""
    return model.fit(table, np.arange(128), dense=256)[0]


def test_bands_cover_held_out_seed_curves_as_often_as_they_say(
        table: curve_table.CurveTable) -> None:
    """Fitted to 192 rows of the shipped table, the surrogate's 68% and 95% bands hold about
    that share of 64 other rows' seed curves, and it ranks their finals."""
    figures = calibration.calibration(table, np.arange(448, 512), rest=np.arange(192),
                                      dense=256)
    assert 0.55 <= figures["in 68%"] <= 0.85, figures
    assert 0.88 <= figures["in 95%"] <= 0.995, figures
    assert figures["spearman"] >= 0.8, figures


def test_the_same_point_and_seed_give_the_same_curve(small: model.Surrogate,
                                                     table: curve_table.CurveTable,
                                                     tmp_path: Path) -> None:
    """A curve is the mean plus its seed's noise, the same however often it is asked for and
    after a save and load; each seed draws its own noise, shared across nearby points."""
    params = dict(zip(table.space, table.params[300].tolist()))
    params["batch_size"] = int(params["batch_size"])
    loaded = model.load(model.save(tmp_path / "s.npz", small))
    assert np.array_equal(loaded.curve(params, 7), small.curve(params, 7))
    assert np.array_equal(small.curve(params, 7), small.curve(params, 7))
    noise = small.curve(params, 7) - small.mean(params)
    assert not np.allclose(noise, small.curve(params, 8) - small.mean(params))
    assert np.abs(noise).max() < 10 * small.seed_sd
    units = table.unit[:64]
    draws = np.array([small.noise(units, seed)[:, -1] for seed in range(30)])
    shared = np.mean(np.corrcoef(draws.T)[np.triu_indices(len(units), 1)])
    assert shared > 0.2  # the per-seed offset and the smooth field: not independent per point
    assert small.optimum <= np.exp(small.mean_log(units)[:, -1]).min()


def test_a_damaged_surrogate_or_one_of_another_study_is_refused(
        small: model.Surrogate, tmp_path: Path) -> None:
    """Loading names the file; a surrogate checks the study as a table does."""
    path = model.save(tmp_path / "s.npz", small)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="broken.npz: not a surrogate, or a damaged one"):
        model.load(broken)
    with pytest.raises(UserError, match="cosine.npz: not a surrogate of format"):
        model.load(TABLE)
    data = yaml.safe_load(SPACE.read_text())
    data["model"]["d_model"] = 64
    with pytest.raises(UserError, match="s.npz: a surrogate of another study: its model.d_model"):
        model.load(path).check_study(load_study(data))


def test_a_surrogate_answers_a_part_of_its_space_and_refuses_what_lies_outside(
        small: model.Surrogate, table: curve_table.CurveTable) -> None:
    """A study that fixes some of the surrogate's hyperparameters inside their ranges and
    samples B from some of its values is answered at those constants; a constant outside its
    range, or a B it never saw, names the setting."""
    data = yaml.safe_load(SPACE.read_text())
    data["hparams"].update({"lr_min_ratio": 0.1, "β2": 0.99, "B": {"choice": [8, 16]}})
    part = small.for_study(load_study(data))
    assert part.fixed == {"lr_min_ratio": 0.1, "beta2": 0.99}
    params = dict(zip(table.space, table.params[300].tolist()))
    params["batch_size"] = 8
    sampled = {k: v for k, v in params.items() if k not in ("lr_min_ratio", "beta2")}
    assert np.array_equal(part.curve(sampled, 3),
                          small.curve({**params, "lr_min_ratio": 0.1, "beta2": 0.99}, 3))
    data["hparams"]["B"] = 8
    at_eight = small.for_study(load_study(data))
    del sampled["batch_size"]
    assert np.array_equal(at_eight.curve(sampled, 3), part.curve({**sampled, "batch_size": 8}, 3))
    assert at_eight.run_seconds(sampled) == small.run_seconds({"batch_size": 8})
    for setting, value, said in (("lr_min_ratio", 0.5, "0.5"),
                                 ("B", {"choice": [2, 8]}, '{"choice": [2, 8]}')):
        outside = yaml.safe_load(SPACE.read_text())
        outside["hparams"][setting] = value
        with pytest.raises(UserError, match=re.escape(f"the study's {said} nor a part of it")):
            small.for_study(load_study(outside))


def test_a_replayed_trial_reports_the_surrogates_curve_for_its_seed(
        small: model.Surrogate, table: curve_table.CurveTable) -> None:
    """`--curve-table` with a surrogate: a trial's evaluations are its sample's curve for its
    training seed, at the surrogate's tokens, at the speed of a run of its B."""
    from model.config import ModelConfig, TrainConfig
    from tuner.search.trial.curve_replay import CurveReplay

    params = dict(zip(table.space, table.params[400].tolist()))
    params["batch_size"] = int(params["batch_size"])
    config = TrainConfig(model=ModelConfig(context_length=32), batch_size=params["batch_size"],
                         seed=3, total_tokens=131072)
    result = CurveReplay(small).replay(params, config)
    assert [r.tokens for r in result.records] == small.tokens.tolist()
    assert [r.val_loss for r in result.records] == small.curve(params, 3).tolist()
    assert result.records[-1].tokens_per_s == pytest.approx(
        small.tokens[-1] / small.run_seconds(params))
