"""Transfer studies: `{transfer: [...]}` in the study file, the searcher that hands each sample out
at every size, and a whole study on real Ray, Optuna and MLflow with its `best` and `report`."""

from __future__ import annotations

import copy
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from studies import (
    ENV,
    _wait_until,
    fresh_store,
    mlflow_runs,
    resume_to_the_end,
    run_tuner,
    start_search,
    write_space,
)

from tuner.space import SpaceError, build_study

STUDY: dict[str, Any] = {
    "name": "t",
    "data": {"source": "synthetic"},
    "model": {"vocab_size": 512, "context_length": 32, "d_model": {"transfer": [32, 64, 128]},
              "num_layers": 1, "num_heads": 4, "parametrization": "mup"},
    "hparams": {"α_max": {"loguniform": [1e-3, 1e-1]}, "B": 8},
    "budget": {"tokens": 20480, "eval_tokens": 10240},
    "search": {"algorithm": "random", "num_samples": 3},
}


def study_with(**sections: dict[str, Any]) -> Any:
    data = copy.deepcopy(STUDY)
    for name, values in sections.items():
        data[name].update(values)
    return build_study(data)


def problems(**sections: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SpaceError) as caught:
        study_with(**sections)
    return {issue.path: issue.message for issue in caught.value.issues}


def test_a_transfer_study_runs_every_sample_at_each_size_to_the_end() -> None:
    study = study_with()
    assert study.transfer() == ("d_model", [32, 64, 128])
    assert "d_model" not in study.searched()  # sampled by no searcher
    assert study.trial_count == 9
    assert study.search.scheduler == "none"  # the default, for a transfer study
    config = study.trial_config({"lr_max": 0.01, "d_model": 128}, "data")
    assert (config.model.d_model, config.model.mup_base_d_model) == (128, 32)  # the proxy's
    sp = study_with(model={"parametrization": "sp"})
    assert sp.trial_config({"lr_max": 0.01, "d_model": 64}, "data").model.mup_base_d_model is None
    depth = study_with(model={"d_model": 64, "num_layers": {"transfer": [1, 2]}})
    assert depth.transfer() == ("num_layers", [1, 2]) and depth.trial_count == 6


@pytest.mark.parametrize(("sections", "path", "words"), [
    ({"hparams": {"α_max": {"transfer": [0.01, 0.1]}}}, "hparams.lr_max", "lists model sizes"),
    ({"model": {"num_heads": {"transfer": [2, 4]}}}, "model.num_heads", "lists model sizes"),
    ({"model": {"d_model": {"transfer": [64]}}}, "model.d_model", "needs at least two sizes"),
    ({"model": {"num_layers": {"transfer": [1, 2]}}}, "model.num_layers", "one size at a time"),
    ({"search": {"scheduler": "asha"}}, "search.scheduler", "full budget"),
    ({"search": {"warm_start": "earlier"}}, "search.warm_start", "start it fresh"),
    ({"model": {"d_ff": 128}}, "model.d_ff", "remove it"),
    ({"model": {"num_heads": 3, "d_model": {"transfer": [48, 96, 100]}}}, "model.num_heads",
     "must divide d_model=100"),
])
def test_bad_transfer_settings_are_named(sections: dict[str, Any], path: str, words: str) -> None:
    found = problems(**sections)
    assert path in found and words in found[path], found


def test_a_width_that_cannot_fit_is_refused_before_the_study_starts() -> None:
    """Every sample trains at each size: one that cannot fit is refused, not warned of."""
    from tuner.errors import UserError
    from tuner.search.faults.memory_fit import check_memory

    warned: list[str] = []
    with pytest.raises(UserError, match=r"model\.d_model: .* d_model=32768 \(at least"):
        check_memory(study_with(model={"d_model": {"transfer": [64, 32768]}}), 2, warned.append)
    assert warned == []


def test_the_searcher_learns_from_the_first_size_and_resumes_its_hand_out() -> None:
    """Real OptunaSearch inside: each sample comes out at 32, 64, 128 in turn; only the trials
    at 32 reach Optuna; a restored wrapper hands out the rest of the sample it was at."""
    from tuner.search.searchers.algorithms import build_searcher
    from tuner.search.searchers.transfer_searcher import TransferSearcher

    study = study_with()
    searcher = build_searcher(study)
    assert isinstance(searcher, TransferSearcher)
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert [c["d_model"] for c in configs] == [32, 64, 128, 32]
    assert configs[0]["lr_max"] == configs[1]["lr_max"] == configs[2]["lr_max"] \
        != configs[3]["lr_max"]
    for i, config in enumerate(configs[:3]):
        searcher.on_trial_complete(f"t{i}", {"val_loss": 5.0 - i, **config})
    optuna_trials = searcher.searcher._ot_study.get_trials()
    assert [(t.state.name, t.value) for t in optuna_trials] == [("COMPLETE", 5.0), ("RUNNING",
                                                                                    None)]
    restored = TransferSearcher(build_searcher(study).searcher, "d_model", [32, 64, 128])
    restored.set_state(searcher.get_state())
    assert [restored.suggest(f"t{i}")["d_model"] for i in (4, 5)] == [64, 128]


def test_a_bad_transfer_list_stops_tuner_search_before_it_starts(tmp_path: Path,
                                                                 dataset: Path) -> None:
    space = write_space(tmp_path, "bad", dataset, hparams={"α_max": {"transfer": [0.01, 0.1]}})
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri",
                      f"sqlite:///{tmp_path / 'mlflow.db'}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "hparams.lr_max" in proc.stderr and "lists model sizes" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_transfer_study_records_a_run_per_sample_and_size(tmp_path: Path,
                                                            dataset: Path) -> None:
    """2 α × widths 32, 48 and 64 under μP: 6 runs tagged with their width, the same α at each;
    the Optuna storage holds the 2 trials at 32 only, with their losses; `best` and `report`
    show the best α per width; `tuner scale` fits through its widths as three sizes, and its
    export is the widest size's best trial at the predicted α."""
    import optuna

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = write_space(
        tmp_path, "widths", dataset,
        model={"d_model": {"transfer": [32, 48, 64]}, "d_ff": None, "parametrization": "mup"},
        hparams={"α_max": {"grid": [1e-3, 1e-2]}},
        search={"algorithm": "grid", "storage": storage})
    proc = run_tuner(["search", "--space", str(space), "--tracking-uri", uri], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, parent, children = mlflow_runs(uri, "widths")
    assert parent.data.tags["tuner.transfer"] == "d_model"
    assert "Transfer over d_model: the best α_max" in parent.data.tags["mlflow.note.content"]
    by_width: dict[str, dict[float, Any]] = {}
    for run in children:
        assert run.data.tags["tuner.status"] == "completed"
        assert run.data.params["d_model"] == run.data.tags["tuner.transfer_size"]
        assert run.data.params["mup_base_d_model"] == "32"
        by_width.setdefault(run.data.tags["tuner.transfer_size"], {})[
            float(run.data.params["lr_max"])] = run
    assert {w: sorted(r) for w, r in by_width.items()} == {w: [1e-3, 1e-2] for w in ("32", "48",
                                                                                      "64")}
    told = optuna.load_study(study_name="widths", storage=storage).get_trials()
    proxies = {lr: run.data.metrics["val_loss"] for lr, run in by_width["32"].items()}
    assert {t.params["lr_max"]: t.value for t in told} == proxies

    wide_terminal = {**ENV, "COLUMNS": "250"}  # no table squeezed, whatever runs the tests
    best = run_tuner(["best", "--study", "widths", "--tracking-uri", uri], cwd=tmp_path,
                     env=wide_terminal)
    assert best.returncode == 0, best.stderr
    assert "the best α_max at each d_model" in best.stdout
    assert "val_loss by α_max and d_model" in best.stdout and "d_model=64" in best.stdout
    report = run_tuner(["report", "--study", "widths", "--tracking-uri", uri,
                        "--out", str(tmp_path / "report")], cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "transfer.png").stat().st_size > 10_000
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "## Transfer over d_model" in summary and "| 64 | " in summary

    fit = run_tuner(["scale", "--study", "widths", "--target-params", "10000000",
                     "--target-tokens", "100000000", "--tracking-uri", uri,
                     "--out", str(tmp_path / "fit")], cwd=tmp_path, env=wide_terminal)
    assert fit.returncode == 0, fit.stdout + fit.stderr
    assert all(f"widths:d_model={w}" in fit.stdout for w in (32, 48, 64))
    predicted = re.search(r"α_max = (\S+)", fit.stdout)[1]
    export = run_tuner(["best", "--study", "scale-widths", "--export", str(tmp_path / "big.yaml"),
                        "--tracking-uri", uri], cwd=tmp_path)
    assert export.returncode == 0, export.stdout + export.stderr
    big = yaml.safe_load((tmp_path / "big.yaml").read_text())
    wide = min(by_width["64"].values(), key=lambda r: r.data.metrics["best_val_loss"])
    assert big["model"]["d_model"] == 64 and wide.data.tags["tuner.trial_id"] in big["description"]
    assert big["hparams"]["lr_max"] == float(predicted)


@pytest.mark.slow
def test_a_transfer_study_stopped_mid_sample_resumes_its_other_sizes(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """One trial at a time, stopped while the second sample trains at its first size: the resumed
    study runs each (α, width) pair once, the second sample's other width among them."""
    uri = fresh_store(tmp_path / "store", mlflow_store_template)
    space = write_space(
        tmp_path, "stopped", dataset, model={"d_model": {"transfer": [32, 64]}, "d_ff": None},
        hparams={"α_max": {"grid": [1e-3, 3e-3, 1e-2]}}, budget={"tokens": 81920},
        search={"algorithm": "grid", "max_concurrent": 1, "stop_grace_s": 0})
    driver = start_search(space, uri, tmp_path / "ray", tmp_path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        _wait_until(uri, driver, lambda runs, tokens: len(runs) == 3 and min(tokens.values()) > 0,
                    study="stopped")  # the third has evaluated once, of its 16 evaluations
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=120) == 130
    finally:
        driver.kill()
    _, _, before = mlflow_runs(uri, "stopped")
    assert sorted(r.data.tags["tuner.status"] for r in before) == ["completed", "completed",
                                                                   "interrupted"]
    _, children = resume_to_the_end("stopped", tmp_path / "ray", tmp_path, uri, completed=6)
    pairs = sorted((float(r.data.params["lr_max"]), int(r.data.tags["tuner.transfer_size"]))
                   for r in children)
    assert pairs == [(lr, w) for lr in (1e-3, 3e-3, 1e-2) for w in (32, 64)]
