"""The table of learning curves (benchmarks/curves/build.py, tuner.search.trial.curve_table): built on a
tiny model, resumed, replayed through `tuner search --curve-table`, and refused when it does not
fit the study."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from curve_tables import BENCHMARKS, build, builder, load_script, write_space
from studies import fresh_store, mlflow_runs, run_tuner

from tuner.search.trial import curve_table, surrogate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> tuple[Path, Path]:
    """The tiny study file and its table, built once."""
    folder = tmp_path_factory.mktemp("curves")
    space = write_space(folder, dataset)
    return space, build(space, folder / "work", folder / "table.npz")


def test_table_holds_every_runs_curve_at_the_studys_points(tiny: tuple[Path, Path]) -> None:
    """Four Sobol configurations of the seven parameters, two seeds each, evaluated at the
    study's four points; seed 1's curve is that of the trainer run with seed 1."""
    import dataclasses

    from model.train import train
    from tuner.space import load_study

    space, path = tiny
    table, study = curve_table.load(path), load_study(space)
    assert list(table.space) == list(study.searched())
    assert table.val_loss.shape == (4, 2, 4) and table.tokens.tolist() == [512, 1024, 1536, 2048]
    assert sorted(set(table.params[:, list(table.space).index("batch_size")])) == [4.0, 8.0]
    assert np.all((table.unit > 0) & (table.unit < 1))
    assert table.steps[0].tolist() == (table.tokens // (table.params[0, 4] * 16)).tolist()
    finals = table.final
    assert np.allclose(table.seed_sd, np.abs(finals[:, 0] - finals[:, 1]) / np.sqrt(2))
    params = dict(zip(table.space, table.params[2].tolist()))
    params["batch_size"] = int(params["batch_size"])
    config = study.trial_config(params, study.data.path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = train(dataclasses.replace(config, seed=1))
    finally:
        torch.set_num_threads(threads)
    assert [r.val_loss for r in run.records] == table.val_loss[2, 1].tolist()
    assert table.lookup(params, 7) == (2, 1)
    provenance = table.meta["provenance"]
    assert provenance["cpu_s"] > 0 and provenance["torch"] == [torch.__version__]


def test_a_stopped_build_goes_on_where_it_stopped(tiny: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    """A build killed after three runs, the fourth's line half written, trains the other five
    and writes the same table; one of fewer configurations takes its first ones' runs."""
    space, path = tiny
    work = tmp_path / "work"
    shutil.copytree(path.parent / "work", work)
    lines = (work / builder.RUNS).read_text().splitlines(keepends=True)
    (work / builder.RUNS).write_text("".join(lines[:3]) + lines[3][:40])
    again = curve_table.load(build(space, work, tmp_path / "again.npz"))
    first = curve_table.load(path)
    for name in ("params", "val_loss", "train_loss", "steps", "tokens"):
        assert np.array_equal(getattr(again, name), getattr(first, name), equal_nan=True), name
    assert len(builder.finished_runs(work / builder.RUNS)) == 8
    assert len((work / "commands.txt").read_text().splitlines()) == 2
    fewer = curve_table.load(builder.build(argparse.Namespace(  # trains nothing: all are there
        space=space, configs=2, sobol_seed=0, workers=1, work=work, out=tmp_path / "two.npz")))
    assert np.array_equal(fewer.val_loss, first.val_loss[:2])
    assert len(json.loads((work / builder.PLAN).read_text())["samples"]) == 4


@pytest.mark.slow
def test_replayed_study_reports_the_tables_curves(tiny: tuple[Path, Path], tmp_path: Path,
                                                  mlflow_store_template: Path) -> None:
    """`tuner search --curve-table`: each trial reports, at the table's points, the curve of the
    table's configuration nearest its sample (seed 0: the study's seed), as far as ASHA lets it;
    MLflow records the table, `tuner best` reads the study as any other, and a resume without
    the table is refused."""
    space, path = tiny
    uri = fresh_store(tmp_path, mlflow_store_template)
    proc = run_tuner(["search", "--space", str(space), "--curve-table", str(path),
                      "--tracking-uri", uri, "--storage", str(tmp_path / "ray")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = curve_table.load(path)
    client, parent, runs = mlflow_runs(uri, "tiny-curves")
    assert parent.data.tags["tuner.curve_table"] == f"{table.sha256} {path}"
    assert len(runs) == 4
    best = min(runs, key=lambda r: r.data.metrics["best_val_loss"])
    for run in runs:
        where = tmp_path / run.info.run_id
        where.mkdir()
        params = json.loads(Path(client.download_artifacts(run.info.run_id, "searched.json",
                                                           str(where))).read_text())
        curve = table.val_loss[table.nearest(params), 0]
        history = sorted(client.get_metric_history(run.info.run_id, "val_loss"),
                         key=lambda m: m.step)
        assert [m.step for m in history] == table.tokens[:len(history)].tolist()
        assert [m.value for m in history] == pytest.approx(curve[:len(history)].tolist(),
                                                           rel=1e-6)
        status = run.data.tags["tuner.status"]
        assert (len(history) == 4) == (status == "completed"), status
    shown = run_tuner(["best", "--study", "tiny-curves", "--tracking-uri", uri], cwd=tmp_path)
    assert shown.returncode == 0 and best.data.tags["tuner.trial_id"] in shown.stdout, shown
    trained = run_tuner(["search", "--resume", "--name", "tiny-curves", "--tracking-uri", uri,
                         "--storage", str(tmp_path / "ray"), "--num-samples", "5"], cwd=tmp_path)
    assert trained.returncode == 2 and " ".join(trained.stderr.split()) == (
        f"error: study 'tiny-curves' replayed from the curve table {path}: resume it as it "
        f"started (--curve-table {path}, as it was then)"), trained.stderr


@pytest.mark.parametrize("case", ["missing", "damaged", "other model", "other range",
                                  "other dataset", "surrogate of another model"])
def test_a_table_that_does_not_fit_exits_2_naming_it(case: str, tiny: tuple[Path, Path],
                                                     tmp_path: Path, byte_dataset: Path) -> None:
    """A missing or damaged table, or one (or a surrogate) of another model, space or dataset:
    exit 2 naming the file (and the setting), before any store, Ray or trial."""
    space, path = tiny
    table = tmp_path / "table.npz"
    shutil.copy(path, table)
    if case == "missing":
        table.unlink()
    elif case == "damaged":
        raw = bytearray(table.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        table.write_bytes(bytes(raw))
    elif case.startswith("surrogate"):
        surrogate.save(table, surrogate.fit(curve_table.load(path), dense=64)[0])
        space = write_space(tmp_path, Path(yaml.safe_load(space.read_text())["data"]["path"]),
                            model={"d_model": 32})
    elif case == "other model":
        space = write_space(tmp_path, Path(yaml.safe_load(space.read_text())["data"]["path"]),
                            model={"d_model": 32})
    elif case == "other range":
        space = write_space(tmp_path, Path(yaml.safe_load(space.read_text())["data"]["path"]),
                            hparams={"B": {"choice": [4, 8, 16]}})
    else:
        space = write_space(tmp_path, byte_dataset)
    proc = run_tuner(["search", "--space", str(space), "--curve-table", str(table),
                      "--storage", str(tmp_path / "ray")], cwd=tmp_path, timeout=120)
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    expected = {"missing": "no such curve table file", "damaged": "not a curve table, or a "
                "damaged one", "other model": "a curve table of another study: its model.d_model "
                "is 16, the study's 32", "other range": "a curve table of another study: its "
                "hparams.batch_size is {\"choice\": [4, 8]}, the study's {\"choice\": [4, 8, 16]}",
                "other dataset": "a curve table of another dataset",
                "surrogate of another model": "a surrogate of another study: its model.d_model "
                "is 16, the study's 32"}[case]
    assert said.startswith(f"error: {table}: {expected}"), said
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_committed_table_fits_its_study_whatever_its_noise_interval() -> None:
    """benchmarks/curves/cosine.npz, built before budget.noise_interval existed, stands for
    space.yaml: measuring B_simple leaves the curves as they were, so it is not in the key."""
    from tuner.space import load_study

    table = curve_table.load(BENCHMARKS / "curves" / "cosine.npz")
    study = load_study(BENCHMARKS / "curves" / "space.yaml")
    table.check_study(study)
    measuring = study.model_copy(update={"budget": study.budget.model_copy(
        update={"noise_interval": 1})})
    assert curve_table.study_key(measuring) == curve_table.study_key(study)


def test_the_best_b_at_a_point_is_the_b_of_the_lowest_mean_over_the_seeds() -> None:
    """benchmarks/noise_scale.py `table`: each B's configuration of the lowest mean val_loss, B's
    ranked by it; a seed that diverged (NaN or inf) puts its configuration last."""
    noise_scale = load_script(BENCHMARKS / "noise_scale.py", "noise_scale_benchmark")
    batches = np.array([4.0, 4.0, 8.0, 8.0, 16.0, 16.0])
    val_loss = np.array([[3.0, 3.2], [2.9, 3.5], [2.0, np.nan], [3.0, 3.0], [2.8, 2.8],
                         [np.inf, 1.0]])
    assert noise_scale.best_by_batch(batches, val_loss) == [(16, 2.8, 4), (8, 3.0, 3),
                                                            (4, 3.1, 0)]


def test_at_equal_time_each_b_has_trained_its_share_of_a_run() -> None:
    """benchmarks/noise_scale.py `table --equal-time`: in a run's time at B 8 (5 s), B 4 (10 s a
    run) has trained half its tokens and is read at its last evaluation by then; B 8 at its
    end; a longer time is read at each B's end, never past it."""
    noise_scale = load_script(BENCHMARKS / "noise_scale.py", "noise_scale_benchmark")
    tokens = np.array([100, 200, 300, 400])
    batches = np.array([4.0, 4.0, 8.0])
    val_loss = np.array([[[4.0, 3.0, 2.0, 1.0]] * 2, [[3.5, 2.5, 1.5, 0.5]] * 2,
                         [[3.0, 2.8, 2.6, 2.4]] * 2])
    seconds = {4: 10.0, 8: 5.0}
    assert noise_scale.at_equal_time(tokens, batches, val_loss, seconds, 5.0) == {
        4: (0.5, 2.5), 8: (1.0, 2.4)}
    assert noise_scale.at_equal_time(tokens, batches, val_loss, seconds, 4.0) == {
        4: (0.4, 3.5), 8: (0.8, 2.6)}
    assert noise_scale.at_equal_time(tokens, batches, val_loss, seconds, 20.0) == {
        4: (1.0, 0.5), 8: (1.0, 2.4)}
