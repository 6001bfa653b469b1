"""`tuner scale`: the power-law fit on synthetic points, and the command on three real studies at
three model sizes (real `tuner search`, Ray, MLflow, torch), with `tuner best --export` of its
prediction and the inputs it refuses."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from inspect_study import tuner
from mlflow import MlflowClient
from studies import fresh_store, start_search, write_space

from model.config import load_train_config
from tuner.errors import UserError
from tuner.scale.fit import Study, Trial, fit_power_law, fit_scaling, near_optimal
from tuner.space import load_study
from tuner.store.layout import ROLE_TAG, SCALE_TAG

COMPUTES = [1e15, 1e16, 1e17, 1e18]


def _synthetic(law: tuple[float, float], noise: float, seed: int, per_size: int = 20
               ) -> list[tuple[list[float], list[float]]]:
    """Points y = a·C^b·exp(noise·ε) at each of COMPUTES, one group a compute."""
    a, b = law
    rng = np.random.default_rng(seed)
    return [([c] * per_size, list(a * c ** b * np.exp(noise * rng.standard_normal(per_size))))
            for c in COMPUTES]


@pytest.mark.parametrize("law", [(3.0, -0.125), (0.02, 0.3271)])  # DeepSeek's α and B exponents
def test_fit_recovers_known_exponents_with_an_interval_around_them(law):
    for seed in range(5):
        fit = fit_power_law(_synthetic(law, noise=0.1, seed=seed), resamples=500, seed=seed)
        assert fit.exponent.value == pytest.approx(law[1], abs=0.02)
        assert fit.exponent.lo <= law[1] <= fit.exponent.hi
        assert fit.exponent.hi - fit.exponent.lo < 0.05
        at = fit.at(1e20)  # a prediction two decades past the points
        assert at.lo <= law[0] * 1e20 ** law[1] <= at.hi
        assert fit.points == 4 * 20


def test_an_exact_power_law_is_fitted_exactly():
    fit = fit_power_law(_synthetic((0.5, -0.2), noise=0.0, seed=0, per_size=2), resamples=50)
    assert fit.coefficient == pytest.approx(0.5) and fit.exponent.value == pytest.approx(-0.2)
    assert fit.exponent.lo == pytest.approx(-0.2) and fit.exponent.hi == pytest.approx(-0.2)


def test_near_optimal_keeps_the_trials_within_the_margin_of_the_best():
    losses = [2.006, 2.0, 3.0, 2.004, 2.005]
    assert near_optimal(losses) == [1, 3, 4]  # 2.0·(1 + 0.25%) = 2.005
    assert near_optimal(losses, margin=0.0) == [1]
    assert near_optimal(losses, margin=0.01) == [0, 1, 3, 4]


def _study(name: str, compute: float, searched: tuple[str, ...] = ("lr_max",), seed: int = 0,
           dataset: str = "d") -> Study:
    """A study at `compute` whose trials' loss is least at α = 0.1·C^-0.1 and B = 0.01·C^0.3."""
    rng = np.random.default_rng(seed)
    best_lr, best_b = 0.1 * compute ** -0.1, 0.01 * compute ** 0.3
    trials = []
    for i, (lr_factor, b_factor) in enumerate(rng.uniform(0.5, 2.0, size=(200, 2))):
        lr = best_lr * lr_factor if "lr_max" in searched else 1e-3
        bs = best_b * b_factor if "batch_size" in searched else 32
        loss = 2.0 + np.log(lr / best_lr) ** 2 + np.log(bs / best_b) ** 2
        trials.append(Trial(f"run{i}", f"t{i}", {"lr_max": lr, "batch_size": bs}, loss, compute))
    return Study(name, int(compute / 6 / 1e6), 1_000_000, frozenset(searched), trials, dataset)


def test_fit_scaling_fits_what_the_studies_searched_and_predicts_at_the_target():
    studies = [_study(f"s{i}", c, ("lr_max", "batch_size"), seed=i)
               for i, c in enumerate(COMPUTES)]
    fit = fit_scaling(studies, margin=0.02, target=(10**9, 10**11), resamples=300)
    assert fit.laws["lr_max"].exponent.value == pytest.approx(-0.1, abs=0.02)
    assert fit.laws["batch_size"].exponent.value == pytest.approx(0.3, abs=0.03)
    predicted = fit.prediction()
    assert predicted["lr_max"].value == pytest.approx(0.1 * 6e20 ** -0.1, rel=0.15)
    assert all(0 < len(trials) < 200 for trials in fit.near.values())
    alone = fit_scaling([_study(f"s{i}", c) for i, c in enumerate(COMPUTES[:3])])
    assert alone.laws["batch_size"] is None and alone.prediction() == {}  # B: not searched


@pytest.mark.parametrize("studies, message", [
    ([_study("s0", 1e15), _study("s1", 1e16), _study("s1b", 1e16 * 1.001)],
     "a fit needs at least 3 sizes; got 2: s0 (C = 1e+15 FLOPs), s1 (C = 1e+16 FLOPs), s1b"),
    ([_study(f"s{i}", c, ("batch_size",)) for i, c in enumerate(COMPUTES)],
     "no study searched α_max (lr_max): there is nothing to fit"),
    ([_study("s0", 1e15, ("lr_max", "batch_size")), _study("s1", 1e16, ("lr_max", "batch_size")),
      _study("s2", 1e17)],
     "B (batch_size) is searched in 2 of the studies (s0, s1): a fit of it needs at least 3"),
])
def test_fit_scaling_refuses_what_cannot_be_fitted(studies, message):
    with pytest.raises(UserError, match=re.escape(message)):
        fit_scaling(studies, resamples=10)


# -- the command, on real studies ----------------------------------------------------------------

WIDTHS = (16, 32, 48)


@dataclass
class Recorded:
    uri: str
    work: Path
    names: list[str]
    other: str  # a study of another dataset


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, dataset: Path, byte_dataset: Path,
             mlflow_store_template: Path) -> Recorded:
    """Three grid studies of α_max × B at widths 16, 32, 48, and one on another dataset."""
    work = tmp_path_factory.mktemp("scale")
    uri = fresh_store(work / "store", mlflow_store_template)
    grid = {"α_max": {"grid": [0.003, 0.03]}, "B": {"grid": [8, 16]}}
    search = {"algorithm": "grid", "scheduler": "none"}
    budget = {"tokens": 10240, "eval_interval": 20}
    spaces = [write_space(work, f"w{d}", dataset, model={"d_model": d, "d_ff": 2 * d},
                          hparams=grid, budget=budget, search=search,
                          tracking={"uri": uri, "log_checkpoints": "none"}) for d in WIDTHS]
    spaces.append(write_space(work, "bytes", byte_dataset, hparams={"α_max": 0.01}, budget=budget,
                              search={**search, "algorithm": "random", "num_samples": 1},
                              tracking={"uri": uri, "log_checkpoints": "none"}))
    for pair in (spaces[:2], spaces[2:]):  # two at a time: much of a study is Ray starting
        procs = [start_search(space, uri, work / "ray", work) for space in pair]
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, out + err
    return Recorded(uri, work, [f"w{d}" for d in WIDTHS], "bytes")


def _fits(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, filter_string=f"tags.`{ROLE_TAG}` = 'scale'")


@pytest.mark.slow
def test_scale_on_real_studies(recorded, tmp_path):
    """One test, so that a single worker builds the studies: the fit, its export, the refusals."""
    _fits_records_and_exports_its_prediction(recorded, tmp_path)
    for i, (which, extra, message) in enumerate(REFUSED):
        _refuses_and_writes_nothing(recorded, tmp_path / f"refused{i}", which, extra, message)


def _fits_records_and_exports_its_prediction(recorded: Recorded, tmp_path: Path) -> None:
    out = tmp_path / "out"
    studies = [arg for name in recorded.names for arg in ("--study", name)]
    code, text = tuner("scale", *studies, "--target-params", "1000000", "--target-tokens",
                       "20000000", "--name", "fit", "--out", str(out), "--tracking-uri",
                       recorded.uri)
    assert code == 0, text
    for name in recorded.names:
        assert re.search(rf"│ {name} +│ [\d,]+ +│ 10,240 ", text), text
    assert "α_max*(C) = " in text and "B*(C) = " in text and "exponent 95% interval" in text
    printed = {symbol: value for symbol, value in re.findall(
        r"^ +(α_max|B) = (\S+) +95% interval", text, flags=re.M)}
    assert set(printed) == {"α_max", "B"}, text

    data = json.loads((out / "scaling.json").read_text())
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert [s["name"] for s in data["studies"]] == recorded.names
    assert [s["params"] for s in data["studies"]] == sorted(s["params"] for s in data["studies"])
    assert data["prediction"]["lr_max"]["exported"] == float(printed["α_max"])
    [run] = _fits(recorded.uri)
    assert run.data.tags[SCALE_TAG] == "fit" and run.info.run_name == "fit"
    assert run.data.params["studies"] == ",".join(recorded.names)
    assert run.data.metrics["lr_max/exponent"] == pytest.approx(data["laws"]["lr_max"]["exponent"])
    client = MlflowClient(tracking_uri=recorded.uri)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"scaling.png",
                                                                        "scaling.json"}
    assert client.get_experiment(run.info.experiment_id).name == "scaling"

    export = tmp_path / "big.yaml"
    code, text = tuner("best", "--study", "fit", "--export", str(export), "--tracking-uri",
                       recorded.uri)
    assert code == 0, text
    assert f"wrote the prediction to {export}" in text
    study = load_study(export)  # the schema's loader: a valid fixed study
    assert study.searched() == {}
    config = load_train_config(export)  # what `python -m model.train --config` runs
    assert config.lr_max == float(printed["α_max"]) and config.batch_size == int(printed["B"])
    assert config.total_tokens == 20_000_000 and config.model.d_model == WIDTHS[-1]
    assert "N = 1,000,000" in study.description

    code, text = tuner("scale", *studies, "--name", "bare", "--out", str(tmp_path / "bare"),
                       "--tracking-uri", recorded.uri)
    assert code == 0 and "no prediction" in text, text
    code, text = tuner("best", "--study", "bare", "--export", str(tmp_path / "none.yaml"),
                       "--tracking-uri", recorded.uri)
    assert code == 2 and "has no prediction to export" in text, text
    assert not (tmp_path / "none.yaml").exists()


REFUSED = [
    ([0, 1], [], "a fit needs at least 3 sizes; got 2: w16 (C = "),
    ([0, 1, "bytes"], [], "the studies trained on different datasets: w16, w32 (dataset "),
    ([0, 1, 2], ["--target-params", "1000"], "give both --target-params and --target-tokens"),
    ([0, 1, "nope"], [], "no study 'nope' in "),
    ([0, 1, 2], ["--name", "w16"], "--name w16: a study has that name"),
]


def _refuses_and_writes_nothing(recorded: Recorded, tmp_path: Path, which: list, extra: list,
                                message: str) -> None:
    names = [recorded.names[i] if isinstance(i, int) else i for i in which]
    before = len(_fits(recorded.uri))
    code, text = tuner("scale", *[a for n in names for a in ("--study", n)], *extra, "--out",
                       str(tmp_path / "out"), "--tracking-uri", recorded.uri)
    assert code == 2, text
    assert message in " ".join(text.split()), text
    assert len(_fits(recorded.uri)) == before and not (tmp_path / "out").exists()
