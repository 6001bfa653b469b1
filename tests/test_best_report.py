"""`tuner best`, `tuner report` and the warm-start history, on a real recorded study."""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from inspect_study import SPACE, TRIALS, log_study, tuner
from mlflow import MlflowClient

from model.config import ModelConfig, TrainConfig, load_train_config
from model.train import train
from tuner.errors import UserError
from tuner.inspect import plots, report
from tuner.inspect.findings import Curve, Findings
from tuner.inspect.importance import Importance, values_at_equal_tokens
from tuner.search.searchers import history
from tuner.search.searchers.algorithms import seed_study
from tuner.space import SpaceError, build_study, load_study
from tuner.store import runs
from tuner.store.rows import TrialRow, shown_noise

pytest_plugins = ["inspect_study"]  # the `recorded` study fixture

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_best_lists_top_trials_by_symbol(recorded):
    code, out = tuner("best", "--study", recorded.name, "--top", "3", "--tracking-uri",
                      recorded.uri)
    assert code == 0, out
    header = next(line for line in out.splitlines() if "val_loss" in line)
    for column in ("α_max", "B", "T_warmup/T_total", "B_simple", "perplexity", "tokens", "status",
                   "run id"):
        assert column in header
    rows = [line for line in out.splitlines() if re.search(r"[0-9a-f]{32}", line)]
    assert len(rows) == 3
    assert recorded.best_run_id in rows[0] and "completed" in rows[0]
    best = MlflowClient(tracking_uri=recorded.uri).get_run(recorded.best_run_id)
    noise = best.data.metrics["noise_scale"]  # at its last evaluation, on the token axis
    assert re.search(rf"best trial trial\d+: B_simple at its end {shown_noise(noise)} sequences "
                     rf"\(.+ tokens\), its B {best.data.params['batch_size']}: (below|near|above) "
                     "B_simple", out), out


def test_best_keeps_every_value_whole_in_80_columns(recorded):
    """Where its table does not fit, `tuner best` prints a block per trial: no value is cut."""
    code, out = tuner("best", "--study", recorded.name, "--tracking-uri", recorded.uri,
                      columns=80)
    assert code == 0, out
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert all(f"run id {run_id}" in out for run_id in recorded.run_ids)
    assert "0.02" in out and "completed" in out  # the best trial's α_max, printed short


def test_best_and_report_import_neither_torch_nor_ray(recorded, tmp_path):
    """Reading a study's results needs neither, and each takes a second or more to import."""
    where = ["--study", recorded.name, "--tracking-uri", recorded.uri]
    commands = [["best", *where], ["report", *where, "--out", str(tmp_path / "report")]]
    code = ("import sys; from tuner.cli import main\n"
            f"for args in {commands!r}:\n"
            "    sys.argv = ['tuner', *args]\n"
            "    try:\n        main()\n"
            "    except SystemExit as exit_:\n        assert not exit_.code, exit_\n"
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    assert recorded.best_run_id in out.stdout
    assert (tmp_path / "report" / report.SUMMARY_MD).is_file()
    assert out.stdout.splitlines()[-1] == "[]"


def test_export_then_train_gives_the_trial_result(recorded, tmp_path):
    export = tmp_path / "best.yaml"
    code, out = tuner("best", "--study", recorded.name, "--export", str(export),
                      "--tracking-uri", recorded.uri)
    assert code == 0, out
    study = load_study(export)
    assert study.searched() == {} and study.search.num_samples == 1
    assert study.tracking.uri == recorded.uri
    config = study.trial_config({}, recorded.data)  # what `tuner search` runs as its one trial
    client = MlflowClient(tracking_uri=recorded.uri)
    original = runs.trial_config(client, client.get_run(recorded.best_run_id), tmp_path)
    assert config == original
    assert load_train_config(export) == config  # what `python -m model.train --config` runs
    result = train(config)
    logged = runs.metric_points(client, recorded.best_run_id, "val_loss")
    assert [(r.tokens, r.val_loss) for r in result.records] == logged


def test_an_exported_study_masks_the_store_credentials(recorded, tmp_path):
    """best.yaml is a file to share: the store's password is written as ***, as MLflow records
    it."""
    from tuner.inspect.best import fixed_study

    client = MlflowClient(tracking_uri=recorded.uri)
    config = runs.trial_config(client, client.get_run(recorded.best_run_id), tmp_path)
    data = fixed_study(config, {}, "tiny-best", "", "postgresql://alice:S3cret@db/mlflow")
    assert data["tracking"] == {"uri": "postgresql://alice:***@db/mlflow"}


def test_report_writes_valid_plots_and_logs_them(recorded, tmp_path):
    out = tmp_path / "report"
    code, text = tuner("report", "--study", recorded.name, "--out", str(out),
                       "--tracking-uri", recorded.uri)
    assert code == 0, text
    import matplotlib.image

    pngs = (report.LOSS_PNG, report.LR_PNG, report.IMPORTANCE_PNG, report.PARALLEL_PNG,
            plots.NOISE_PNG)
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert matplotlib.image.imread(out / name).shape[2] in (3, 4)
    page = (out / report.STUDY_HTML).read_text()
    assert page.count("data:image/png;base64,") == len(pngs)  # inline: the page stands alone
    assert not re.search(r'(src|href)="(?!data:)', page)
    summary = (out / report.SUMMARY_MD).read_text()
    assert recorded.best_run_id in summary and "α_max" in summary
    assert "Gradient noise scale: B_simple at its end " in summary and plots.NOISE_PNG in summary
    assert "B_simple at its end</th>" in page
    logged = {Path(f.path).name for f in MlflowClient(tracking_uri=recorded.uri).list_artifacts(
        recorded.parent_id, "report")}
    assert logged == {p.name for p in out.iterdir()}


def _row(run_id: str, val_loss: float, tokens: int = 30, **params: object) -> TrialRow:
    return TrialRow(trial_id=run_id.replace("r", "t"), run_id=run_id, params=params,
                    val_loss=val_loss, tokens=tokens, status="completed")


def _leaders(curves: list[Curve]) -> list[TrialRow]:
    """The rows of the curves that neither diverged nor failed, best first."""
    rows = [_row(c.run_id, min(v for _, v in c.points), c.points[-1][0]) for c in curves
            if c.status not in ("diverged", "failed")]
    return sorted(rows, key=lambda r: r.val_loss)


def test_files_written_for_later_name_the_store_absolutely(recorded, tmp_path, monkeypatch):
    """A store given relative to the working folder (the default sqlite:///mlflow.db) is named by
    its whole path in the exported study and the report's replay line: they work from anywhere.
    The commands printed for copying are as tuner was started: under `uv run` when uv started
    it."""
    shutil.copy(recorded.uri.removeprefix("sqlite:///"), tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    whole = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out = tuner("best", "--study", recorded.name, "--export", "best.yaml",
                      "--tracking-uri", "sqlite:///mlflow.db")
    assert code == 0, out
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["tracking"]["uri"] == whole
    assert ": tuner search --space best.yaml   or   python -m model.train --config best.yaml" \
        in out
    monkeypatch.setenv("UV_RUN_RECURSION_DEPTH", "1")  # as `uv run` starts it
    code, out = tuner("report", "--study", recorded.name, "--out", "r",
                      "--tracking-uri", "sqlite:///mlflow.db")
    assert code == 0, out
    assert (f"Reproduce it: `uv run tuner replay {recorded.best_run_id} --tracking-uri {whole}`"
            in (tmp_path / "r" / report.SUMMARY_MD).read_text())


def test_an_export_into_no_folder_exits_2_before_the_table(recorded, tmp_path):
    code, out = tuner("best", "--study", recorded.name, "--export", str(tmp_path / "no/x.yaml"),
                      "--tracking-uri", recorded.uri)
    assert code == 2 and out.strip() == f"error: --export {tmp_path / 'no/x.yaml'}: " \
        f"{tmp_path / 'no'} is not a folder"


@pytest.mark.parametrize("target", ["/dev/null", "/dev/full"])
def test_an_export_to_no_regular_file_exits_2_naming_it(recorded, target):
    """/dev/null took the study and the command said to run it; /dev/full failed unnamed."""
    code, out = tuner("best", "--study", recorded.name, "--export", target,
                      "--tracking-uri", recorded.uri)
    assert code == 2 and out.startswith(f"error: --export {target}: ") and "wrote" not in out, out


def test_an_export_that_cannot_be_written_names_the_file_and_leaves_none(tmp_path):
    """A write that fails midway (a full disk; here a file size limit) names the file, and
    leaves neither it nor a part of it."""
    code = ("import resource, sys\n"
            "from pathlib import Path\n"
            "from tuner.inspect.best import write_study_file\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))\n"
            "write_study_file(Path(sys.argv[1]), {'description': 'x' * 1000})\n")
    target = tmp_path / "best.yaml"
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert f"UserError: --export {target}: cannot write it: File too large" in proc.stderr, \
        proc.stderr
    assert not list(tmp_path.iterdir())


def test_a_report_into_no_folder_and_an_unknown_store_exit_2_naming_them(recorded, tmp_path):
    (tmp_path / "file").write_text("x")
    code, out = tuner("report", "--study", recorded.name, "--out", str(tmp_path / "file/r"),
                      "--tracking-uri", recorded.uri)
    assert code == 2 and out.startswith(f"error: --out {tmp_path / 'file/r'}: cannot be made a "
                                        "folder (Not a directory)"), out
    assert not (tmp_path / "file/r").exists()
    code, out = tuner("best", "--study", recorded.name, "--tracking-uri", "sqllite:///x.db")
    assert code == 2 and out.startswith("error: tracking store sqllite:///x.db: unknown scheme "
                                        "'sqllite'; use sqlite:///FILE"), out
    code, out = tuner("best", "--study", recorded.name, "--tracking-uri", "sqlite://")
    assert code == 2 and out.startswith("error: tracking store sqlite:// is an in-memory "
                                        "database"), out  # MLflow would make its tables there


def test_report_figures_have_one_series_per_trial(recorded):
    from tuner.inspect import best

    client = MlflowClient(tracking_uri=recorded.uri)
    trial_runs = runs.trial_runs(client, client.get_run(recorded.parent_id))
    curves = report.curves(client, trial_runs)
    rows = [best.trial_row(client, run) for run in runs.ranked(trial_runs)]
    fig = plots.loss_figure(curves, rows)
    ax, zoom = fig.axes
    trials = [line for line in ax.lines if (line.get_gid() or "").startswith("trial:")]
    assert len(trials) == len(TRIALS)
    top = next(line for line in trials if line.get_gid() == "trial:trial00000")
    assert top.get_linewidth() > max(line.get_linewidth() for line in trials if line is not top)
    stopped = [line for line in trials if line.get_alpha() == plots.STYLE["stopped"]["alpha"]]
    assert len(stopped) == sum(1 for _, stop in TRIALS if stop)
    assert ax.get_yscale() == "log" and ax.xaxis.get_major_formatter()(40960, 0) == "41k"
    labels = [t.get_text() for t in zoom.get_legend().get_texts()]
    assert labels[0].startswith(f"#1 trial00000 {rows[0].val_loss:.4f} B=8 α_max=0.02")
    gap = rows[1].val_loss - rows[0].val_loss
    assert labels[1].startswith(f"#2 {rows[1].trial_id} {rows[1].val_loss:.4f} (+{gap:.4f})")
    low, high = zoom.get_ylim()  # the leaders' ends apart: not the whole range of the left
    assert low < rows[0].val_loss and high < 1.3 * rows[0].val_loss


def test_the_noise_figure_draws_each_leaders_measurements_beside_its_b(recorded):
    from tuner.inspect import best

    client = MlflowClient(tracking_uri=recorded.uri)
    trial_runs = runs.ranked(runs.trial_runs(client, client.get_run(recorded.parent_id)))
    series = [(row, runs.metric_points(client, row.run_id, "noise_scale"))
              for row in (best.trial_row(client, run) for run in trial_runs)]
    ax = plots.noise_figure(series).axes[0]
    drawn = {line.get_gid(): line for line in ax.lines
             if (line.get_gid() or "").startswith("noise:")}
    measured = {row.trial_id: points for row, points in series if points}
    assert sorted(measured) == ["trial00000", "trial00002"]  # the completed ones, at their end
    assert {gid: list(line.get_xdata()) for gid, line in drawn.items()} == {
        f"noise:{trial}": [tokens for tokens, _ in points] for trial, points in measured.items()}
    dotted = [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == ":"]
    assert sorted(dotted) == sorted(row.batch_size for row, _ in series)
    assert ax.get_yscale() == "log"


def test_importance_compares_trials_where_all_trained_alike(recorded, tmp_path):
    """fANOVA rates the values by every trial's val_loss at the same tokens: the stopped
    trials' last evaluation, not the completed trials' final loss beside the stopped ones'."""
    client = MlflowClient(tracking_uri=recorded.uri)
    trial_runs = runs.trial_runs(client, client.get_run(recorded.parent_id))
    curves = report.curves(client, trial_runs)
    values, at = values_at_equal_tokens(curves)
    stopped_at = {c.points[-1][0] for c in curves if c.status == "stopped"}
    assert stopped_at == {at} and at < max(c.points[-1][0] for c in curves)
    by_run = {c.run_id: dict(c.points) for c in curves}
    assert values == {run_id: by_run[run_id][at] for run_id in recorded.run_ids}
    code, text = tuner("report", "--study", recorded.name, "--out", str(tmp_path / "r"),
                       "--tracking-uri", recorded.uri)
    assert code == 0, text
    assert (f"{len(TRIALS)} completed and stopped trials at their first evaluation from {at:,} "
            "tokens") in " ".join((tmp_path / "r" / report.SUMMARY_MD).read_text().split())


def test_each_figure_says_what_it_measured(recorded, tmp_path):
    """importance.png names the tokens and trials it rates, with a spread; parallel coordinates
    draws every trial to its best val_loss, the value every other place reports."""
    client = MlflowClient(tracking_uri=recorded.uri)
    parent = client.get_run(recorded.parent_id)
    found, parallel = report.read_findings(client, recorded.name, parent,
                                           runs.trial_runs(client, parent), tmp_path)
    imp, at = found.importance, values_at_equal_tokens(found.curves)[1]
    assert (imp.tokens, imp.trials, imp.resamples) == (at, len(TRIALS), 30)
    assert all(0 <= imp.low[n] <= imp.high[n] <= 1 for n in imp.scores)
    assert any(imp.high[n] > imp.low[n] for n in imp.scores)  # four trials: no sharp answer
    title = plots.importance_figure(imp).axes[0].get_title()
    assert f"val_loss at {at:,} tokens, {len(TRIALS)} trials" in title
    fig = plots.parallel_figure(parallel, (at, 1280 * 8))
    lines = {line.get_gid(): line for line in fig.axes[0].lines}
    assert len(lines) == len(TRIALS) and lines["trial:trial00000"].get_color() == "black"
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert f"best val_loss\nreached at {plots.short_tokens(at)}–10.2k tokens" in texts
    assert f"#1 trial00000 {found.best.val_loss:.4f}" in texts
    objective = fig.axes[-1]
    assert objective.get_ylim()[0] < found.best.val_loss < objective.get_ylim()[1]


def test_parallel_coordinates_of_100_trials_stay_small(tmp_path):
    import optuna

    dists = {"lr_max": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "warmup_fraction": optuna.distributions.FloatDistribution(0.0, 0.2),
             "batch_size": optuna.distributions.CategoricalDistribution([8, 16, 32])}
    trials = [(f"t{i}", optuna.trial.create_trial(
        params={"lr_max": 1e-4 * 1.07 ** i, "warmup_fraction": i / 500,
                "batch_size": (8, 16, 32)[i % 3]}, distributions=dists, value=0.4 + i / 20))
        for i in range(100)]
    plots.parallel_figure(trials, (4096, 40960)).savefig(tmp_path / "p.png", dpi=110)
    assert (tmp_path / "p.png").stat().st_size < 1_000_000


def test_importance_takes_each_trial_where_it_first_reached_the_common_tokens():
    """A batch size whose steps do not divide the evaluation interval evaluates a step later,
    and ends a step past the budget: it is rated there, not an interval earlier (or not at all)."""
    stopped = Curve("a", "r1", "stopped", [(40960, 6.0)])
    uneven = Curve("b", "r2", "completed", [(41472, 5.5), (82944, 5.0), (410112, 4.0)])
    even = Curve("c", "r3", "completed", [(40960, 5.8), (409600, 4.2)])
    diverged = Curve("d", "r4", "diverged", [(20480, 3.0), (30720, math.inf)])
    assert values_at_equal_tokens([stopped, uneven, even, diverged]) == (
        {"r1": 6.0, "r2": 5.5, "r3": 5.8}, 40960)
    assert values_at_equal_tokens([uneven, even]) == ({"r2": 4.0, "r3": 4.2}, 409600)
    assert values_at_equal_tokens([diverged]) == ({}, 0)


def test_diverged_trial_is_marked():
    curves = [Curve("a", "r1", "completed", [(10, 3.0), (20, 2.5)]),
              Curve("b", "r2", "diverged", [(10, 4.0), (20, math.inf)])]
    ax = plots.loss_figure(curves, _leaders(curves)).axes[0]
    marks = [line for line in ax.lines if line.get_gid() == "diverged"]
    assert len(marks) == 1 and list(marks[0].get_xydata()[0]) == [10, 4.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["best", "diverged"]


def test_a_trial_with_no_finite_value_is_counted_apart_in_the_title():
    curves = [Curve("a", "r1", "completed", [(10, 3.0), (20, 2.5)]),
              Curve("b", "r2", "diverged", [(10, math.inf)])]
    ax = plots.loss_figure(curves, _leaders(curves)).axes[0]
    assert ax.get_title() == "val_loss of 1 trial (1 more with no finite value, not drawn)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["best"]  # only what it shows
    ax = plots.loss_figure(curves[1:], []).axes[0]
    assert ax.get_legend() is None  # nothing drawn: a legend of lines there are none of


def test_summary_names_the_tokens_where_the_best_was_reached_and_the_margin():
    """A trial whose last evaluation is worse than its best: the best is where it was reached;
    the runner-up's gap is named."""
    curves = [Curve("a", "r1", "completed", [(10, 3.0), (20, 2.5), (30, 2.7)]),
              Curve("b", "r2", "stopped", [(10, 3.5)])]
    rows = [_row("r1", 2.5), _row("r2", 3.5, 10)]
    text = report.summary_markdown(Findings("s", curves, rows, None, "", "tuner replay r1", 40),
                                   [])
    assert "reached at 20 of the 30 tokens it trained; 1.0000 (28.6%) below the runner-up, " \
        "trial t2 (3.5000)." in " ".join(text.split())
    assert "The study searched no parameter" in text and "| parameter |" not in text  # fixed


def test_a_symbol_with_pipes_stays_one_table_cell():
    """|V| (vocab_size) in the summary's tables: escaped, or its pipes would split the row."""
    curves = [Curve("a", "r1", "completed", [(10, 3.0)])]
    found = Importance({"vocab_size": 1.0}, {"vocab_size": 0.9}, {"vocab_size": 1.0}, 10, 3, 30)
    text = report.summary_markdown(Findings("s", curves, [_row("r1", 3.0, 10, vocab_size=512)],
                                            found, "3 trials", "tuner replay r1", 10), [])
    assert "| \\|V\\| | 512 |" in text and "| \\|V\\| | 1.00 | 0.90–1.00 |" in text


def test_trial_stopped_at_its_first_evaluation_is_drawn():
    """A one-point curve (ASHA's first rung) draws no line: its dot is what shows it."""
    curves = [Curve("a", "r1", "completed", [(10, 3.0), (20, 2.5)]),
              Curve("b", "r2", "stopped", [(10, 4.0)])]
    ax = plots.loss_figure(curves, _leaders(curves)).axes[0]
    stopped = next(line for line in ax.lines if line.get_gid() == "trial:b")
    assert stopped.get_marker() == "o" and stopped.get_markersize() > 0
    assert list(stopped.get_xydata()[stopped.get_markevery()[0]]) == [10, 4.0]


def test_lr_points_follow_the_trainer(recorded, tmp_path):
    client = MlflowClient(tracking_uri=recorded.uri)
    config = runs.trial_config(client, client.get_run(recorded.best_run_id), tmp_path)
    schedule = dict(report.lr_points(config, runs.metric_points(
        client, recorded.best_run_id, "val_loss")))
    logged = runs.metric_points(client, recorded.best_run_id, "lr")
    assert len(logged) == 8 and len(schedule) == 40  # an evaluation every 5 of 40 steps
    for tokens, lr in logged:
        assert schedule[tokens] == lr  # the α each evaluation logged is on the curve


def test_lr_points_follow_a_plateau_trial_through_its_warmup(byte_dataset):
    """Plateau cuts depend on the logged val_loss; the stalls inside the warmup count for neither
    the trainer nor the figure, so α reaches α_max, and the stalls after it cut."""
    model = ModelConfig(vocab_size=256, context_length=32, d_model=32, num_layers=2, num_heads=4)
    config = TrainConfig(model=model, data=str(byte_dataset), lr_max=0.1, warmup_iters=30,
                         total_iters=60, batch_size=8, eval_interval=2, eval_windows=8,
                         device="cpu", seed=3, schedule="plateau", plateau_patience=0)
    records = train(config).records
    inside = [r.val_loss for r in records if r.step < config.warmup_iters]
    assert any(b >= a for a, b in itertools.pairwise(inside))  # a stall while α ramps up
    schedule = dict(report.lr_points(config, [(r.tokens, r.val_loss) for r in records]))
    assert [schedule[r.tokens] for r in records] == [r.lr for r in records]
    after = [r.lr for r in records if r.step > config.warmup_iters]
    assert after[0] == config.lr_max and min(after) < config.lr_max


@pytest.mark.parametrize("command", ["best", "report"])
def test_unknown_study_exits_2(recorded, command, tmp_path):
    code, out = tuner(command, "--study", "nosuch", "--tracking-uri", recorded.uri,
                      *(["--out", str(tmp_path / "r")] if command == "report" else []))
    assert code == 2 and "no study 'nosuch'" in out and "tiny" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["best", "replay"])
def test_a_pbt_trial_is_neither_exported_nor_replayed(recorded, tmp_path, command):
    """PBT changed such a trial's hyperparameters as it ran: no one config produced its result."""
    store = tmp_path / "mlflow.db"
    shutil.copy(recorded.uri.removeprefix("sqlite:///"), store)
    uri = f"sqlite:///{store}"
    MlflowClient(tracking_uri=uri).set_tag(recorded.best_run_id, "tuner.pbt_config", "{}")
    args = (["best", "--study", recorded.name, "--export", str(tmp_path / "best.yaml")]
            if command == "best" else ["replay", recorded.best_run_id])
    code, out = tuner(*args, "--tracking-uri", uri)
    assert code == 2 and "changed by PBT while it ran" in " ".join(out.split())
    assert not (tmp_path / "best.yaml").exists()


def test_a_diverged_or_failed_trial_is_never_the_best(recorded, tmp_path):
    """Whatever loss it reached before, a trial that diverged or failed ranks after the others:
    its config does not train, so it is not the best that is exported, replayed or reported.
    With no other trial, the report still draws the curves, to show where they diverged."""
    store = tmp_path / "mlflow.db"
    shutil.copy(recorded.uri.removeprefix("sqlite:///"), store)
    uri = f"sqlite:///{store}"
    client = MlflowClient(tracking_uri=uri)
    client.set_tag(recorded.best_run_id, "tuner.status", "diverged")
    code, out = tuner("best", "--study", recorded.name, "--top", "4", "--tracking-uri", uri)
    rows = [line for line in out.splitlines() if re.search(r"[0-9a-f]{32}", line)]
    assert code == 0 and len(rows) == 4, out
    assert recorded.best_run_id in rows[-1] and "diverged" in rows[-1]
    assert runs.best_trial(client, recorded.name).info.run_id in rows[0]
    for run_id in recorded.run_ids:
        client.set_tag(run_id, "tuner.status", "failed" if run_id != recorded.best_run_id
                       else "diverged")
    code, out = tuner("best", "--study", recorded.name, "--tracking-uri", uri)
    assert code == 0 and f"study {recorded.name}: no trial to reproduce (each diverged or " \
        "failed)" in " ".join(out.split()), out
    for command in (["best", "--export", str(tmp_path / "best.yaml")], ["replay"]):
        code, out = tuner(*command, "--study", recorded.name, "--tracking-uri", uri)
        assert code == 2 and "neither diverged nor failed" in " ".join(out.split()), out
    assert not (tmp_path / "best.yaml").exists()
    code, out = tuner("report", "--study", recorded.name, "--out", str(tmp_path / "r"),
                      "--tracking-uri", uri)
    assert code == 0, out
    assert {p.name for p in (tmp_path / "r").iterdir()} == {report.LOSS_PNG, report.SUMMARY_MD,
                                                             report.STUDY_HTML}
    summary = (tmp_path / "r" / report.SUMMARY_MD).read_text()
    assert "## Best trial: none" in summary and "shows where each diverged (×)" in summary
    assert "<h2>Best trial: none</h2>" in (tmp_path / "r" / report.STUDY_HTML).read_text()
    client.set_tag(recorded.best_run_id, "tuner.status", "failed")  # nothing diverged: no ×
    code, out = tuner("report", "--study", recorded.name, "--out", str(tmp_path / "r"),
                      "--tracking-uri", uri)
    assert code == 0 and "diverged (×)" not in (tmp_path / "r" / report.SUMMARY_MD).read_text()
    client.update_run(recorded.run_ids[0], "RUNNING")  # mid-study: say so, not just "none"
    code, out = tuner("best", "--export", str(tmp_path / "best.yaml"), "--study", recorded.name,
                      "--tracking-uri", uri)
    assert code == 2 and ("1 of its trials is marked running: if the study is still going, ask "
                          "again after their first evaluation; if its driver was stopped, "
                          f"continue it with tuner search --resume --name {recorded.name}"
                          in " ".join(out.split())), out


@pytest.mark.parametrize("command", [["best", "--study", "tiny"], ["report", "--study", "tiny"],
                                     ["replay", "--study", "tiny"]], ids=lambda c: c[0])
def test_missing_sqlite_store_exits_2_without_creating_it(command, tmp_path):
    """A mistyped store path names the file, rather than creating an empty store there."""
    store = tmp_path / "mlfow.db"
    code, out = tuner(*command, "--tracking-uri", f"sqlite:///{store}")
    assert code == 2 and f"no such file {store}" in " ".join(out.split())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("store", ["", "sqlite:///{empty}", "sqlite:///{other}"])
def test_a_read_command_never_makes_a_store(store, tmp_path, monkeypatch):
    """An empty URI, an empty file or another sqlite database: exit 2 naming it, and no store
    is made or migrated into the file."""
    import sqlite3

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.db").touch()
    with contextlib.closing(sqlite3.connect(tmp_path / "other.db")) as db:
        db.execute("CREATE TABLE notes (text)")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    uri = store.format(empty=tmp_path / "empty.db", other=tmp_path / "other.db")
    code, out = tuner("best", "--study", "tiny", "--tracking-uri", uri)
    assert code == 2 and ("is empty" in out if not uri else "is not an MLflow store" in out), out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_study_name_in_two_experiments_is_refused_as_ambiguous(recorded, tmp_path):
    """Two experiments each hold a study of the name: which one is meant is unknown, so the
    commands say so rather than read the later one."""
    store = tmp_path / "mlflow.db"
    shutil.copy(recorded.uri.removeprefix("sqlite:///"), store)
    uri = f"sqlite:///{store}"
    client = MlflowClient(tracking_uri=uri)
    other = client.create_experiment("elsewhere", artifact_location=(tmp_path / "a").as_uri())
    client.create_run(other, tags={"tuner.study": recorded.name, "tuner.role": "study"})
    for command in (["best"], ["report"], ["replay"]):
        code, out = tuner(*command, "--study", recorded.name, "--tracking-uri", uri)
        message = " ".join(out.split())
        assert code == 2 and f"holds a study {recorded.name!r} in each of the MLflow" in message
        assert "'elsewhere'" in message


def test_damaged_study_records_are_named(tmp_path, mlflow_store_template):
    """A trial's PBT tag that is not JSON, a study.json that is no study: exit 2 naming them."""
    from studies import fresh_store

    uri = fresh_store(tmp_path, mlflow_store_template)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("hurt", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp, tags={"tuner.study": "hurt", "tuner.role": "study"})
    client.log_dict(parent.info.run_id, {}, "study.json")
    trial = client.create_run(exp, tags={
        "mlflow.parentRunId": parent.info.run_id, "tuner.study": "hurt", "tuner.role": "trial",
        "tuner.status": "completed", "tuner.searched": "lr_max", "tuner.pbt_config": "{oops"})
    run_id = trial.info.run_id
    client.log_metric(run_id, "best_val_loss", 1.0, step=100)
    client.log_dict(run_id, TrainConfig(data="d", total_iters=10).to_dict(), "trial_config.json")
    code, out = tuner("best", "--study", "hurt", "--tracking-uri", uri)
    assert code == 2 and f"run {run_id}: its tuner.pbt_config tag is not a JSON object" in out
    client.delete_tag(run_id, "tuner.pbt_config")
    code, out = tuner("report", "--study", "hurt", "--out", str(tmp_path / "r"),
                      "--tracking-uri", uri)
    message = " ".join(out.split())
    assert code == 2
    assert f"study.json of run {parent.info.run_id} is not a resolved study" in message
    assert not (tmp_path / "r").exists()


def _lone_trial(tmp_path, mlflow_store_template, config: dict) -> tuple[str, MlflowClient, str]:
    """A store holding one study of one completed trial run that logged `config`: its URI, a
    client and the trial's run id."""
    from studies import fresh_store

    uri = fresh_store(tmp_path, mlflow_store_template)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("lone", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(exp, tags={"tuner.study": "lone", "tuner.role": "study"})
    trial = client.create_run(exp, tags={
        "mlflow.parentRunId": parent.info.run_id, "tuner.study": "lone", "tuner.role": "trial",
        "tuner.status": "completed"})
    client.log_dict(trial.info.run_id, config, "trial_config.json")
    return uri, client, trial.info.run_id


def test_a_trial_config_with_a_bad_value_is_named_before_a_replay_run(tmp_path,
                                                                      mlflow_store_template):
    config = {**TrainConfig(data=str(tmp_path), total_iters=10).to_dict(), "lr_max": "x"}
    uri, client, run_id = _lone_trial(tmp_path, mlflow_store_template, config)
    code, out = tuner("replay", run_id, "--tracking-uri", uri)
    assert code == 2, out
    assert f"trial_config.json of run {run_id} is not a trainer config (lr_max: α_max must be " \
           "a number" in " ".join(out.split())
    assert len(client.search_runs([client.get_experiment_by_name("lone").experiment_id])) == 2


@pytest.mark.parametrize("deleted", ["run", "experiment"])
def test_a_deleted_run_is_not_replayed_or_generated_from(tmp_path, mlflow_store_template,
                                                         deleted):
    """MLflow keeps a deleted run (or its experiment) until garbage-collected: `best` leaves it
    out, and so do the commands that take a run id."""
    uri, client, run_id = _lone_trial(tmp_path, mlflow_store_template,
                                      TrainConfig(data=str(tmp_path), total_iters=10).to_dict())
    if deleted == "run":
        client.delete_run(run_id)
    else:
        client.delete_experiment(client.get_run(run_id).info.experiment_id)
    for command in (["replay", run_id], ["generate", "--run", run_id, "--prompt", "x"]):
        code, out = tuner(*command, "--tracking-uri", uri)
        assert code == 2, out
        assert f"run {run_id} is deleted in" in out
        assert ("(its run)" if deleted == "run" else "(its experiment 'lone')") in out
    runs = client.search_runs([client.get_run(run_id).info.experiment_id], run_view_type=3)
    assert len(runs) == 2  # no replay run


def test_a_store_failing_mid_command_is_one_line_exit_1(recorded, tmp_path):
    """A store that answers, then fails (here its runs table is gone): MLflow's error on one line
    (masked as every line tuner prints), not a traceback."""
    import sqlite3

    store = tmp_path / "mlflow.db"
    shutil.copy(recorded.uri.removeprefix("sqlite:///"), store)
    with sqlite3.connect(store) as db:
        db.execute("DROP TABLE runs")
    code, out = tuner("best", "--study", recorded.name, "--tracking-uri", f"sqlite:///{store}")
    assert code == 1 and out.strip().splitlines()[-1].startswith("error: MLflow failed: ")
    assert "runs" in out.strip().splitlines()[-1]  # SQLite names what it missed


def test_earlier_trials_warm_start_an_optuna_searcher(recorded):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    _, points, curves, stopped = history.earlier_study(recorded.name, recorded.uri)
    assert [p for p, _ in points] == [params for params, _ in TRIALS]
    assert all(math.isfinite(v) for _, v in points)
    assert sorted(stopped) == [1, 3] and all(len(curves[i]) == 2 for i in stopped)
    assert all(curves[i][len(curves[i])] == points[i][1] for i in curves)  # the last is told
    study = build_study({**yaml.safe_load(SPACE.format(data=recorded.data, uri=recorded.uri)),
                         "name": "next"})
    storage = optuna.storages.InMemoryStorage()
    for _ in range(2):  # a study stopped before its first trial is seeded again as it restarts
        seed_study(storage, "next", "min", history.optuna_trials(study, points, curves, stopped))
    searcher = OptunaSearch(space=study.sample, metric="val_loss", mode="min", storage=storage,
                            study_name="next", sampler=optuna.samplers.TPESampler(seed=0))
    suggested = searcher.suggest("t1")
    assert set(suggested) == {"lr_max", "warmup_fraction", "batch_size"}
    trials = optuna.load_study(study_name="next", storage=storage).trials
    assert len(trials) == len(TRIALS) + 1
    assert [t.value for t in trials[:len(TRIALS)]] == [v for _, v in points]
    # the trials ASHA stopped are pruned, with their evaluations, as a live study tells them
    state = optuna.trial.TrialState
    assert [t.state for t in trials[:len(TRIALS)]] == [state.COMPLETE, state.PRUNED] * 2
    assert trials[1].intermediate_values == curves[1] and trials[1].value == curves[1][2]
    assert trials[0].intermediate_values == curves[0]  # a completed one's too, for BOHB


@pytest.mark.parametrize("algorithm", ["random", "tpe"])
def test_a_warm_started_searcher_does_not_draw_the_earlier_study_again(recorded, algorithm):
    """Same space, same seed: the earlier study's seeded draws would come again, and its trials
    (known, scored) be trained a second time (TPE counts them toward its random start-up)."""
    from tuner.search.searchers.algorithms import build_searcher

    raw = yaml.safe_load(SPACE.format(data=recorded.data, uri=recorded.uri))
    raw["search"].update(algorithm=algorithm, **({"startup_trials": 10} if algorithm == "tpe"
                                                   else {}))
    earlier = build_searcher(build_study({**raw, "name": "earlier"}))
    drawn = [earlier.suggest(f"e{i}") for i in range(4)]
    points = [(params, 1.0 + i) for i, params in enumerate(drawn[:3])]
    study = build_study({**raw, "name": "next"})
    warm = history.optuna_trials(study, points)
    suggest = [build_searcher(study, warm).suggest("n0") for _ in range(2)]
    assert suggest[0] not in drawn and suggest[0] == suggest[1]  # and seeded all the same


def test_a_prior_centred_start_tries_the_earlier_best_then_around_it(recorded):
    """search.start_near 3: the first trial is the earlier study's best, the next two vary its
    ranges a little (on their own scales) and keep its choices; the same each time."""
    from tuner.search.searchers.algorithms import build_searcher

    raw = yaml.safe_load(SPACE.format(data=recorded.data, uri=recorded.uri))
    raw["search"].update(warm_start=recorded.name, start_near=3)
    study = build_study({**raw, "name": "near"})
    points = [(params, 3.0 - i / 4) for i, (params, _) in enumerate(TRIALS)]  # the last best
    warm = history.optuna_trials(study, points)
    searchers = [build_searcher(study, warm) for _ in range(2)]
    runs_of = [[searcher.suggest(f"n{i}") for i in range(4)] for searcher in searchers]
    first = runs_of[0]
    assert runs_of[0] == runs_of[1] and first[0] == TRIALS[3][0]
    for near in first[1:3]:
        assert near != first[0] and near["batch_size"] == 8
        assert abs(math.log(near["lr_max"] / 0.005)) < 0.5 * math.log(30)  # 5 sd of log width
        assert 0 <= near["warmup_fraction"] <= 0.2
    raw["search"].pop("warm_start")
    with pytest.raises(SpaceError, match="give search.warm_start"):
        build_study({**raw, "name": "nowhere"})


def test_warm_start_scores_a_trainer_failure_as_its_searcher_did(recorded, tmp_path):
    """A trial whose trainer raised told its searcher the worst val_loss, so a warm start is told
    the same; one whose process Tune failed told it nothing, so it is left out."""
    import optuna

    store = tmp_path / "mlflow.db"
    shutil.copy(recorded.uri.removeprefix("sqlite:///"), store)
    uri = f"sqlite:///{store}"
    client = MlflowClient(tracking_uri=uri)
    for run_id, where in zip(recorded.run_ids[:2], ("trainer", "process"), strict=True):
        client.set_tag(run_id, "tuner.status", "failed")
        client.set_tag(run_id, "tuner.failed_in", where)
    # recorded before the tag: the trainer's traceback, or Tune's detail again
    for run_id, error in zip(recorded.run_ids[2:], ("Traceback (most recent call last): …",
                                                    "failed: the trial's process failed"),
                             strict=True):
        client.set_tag(run_id, "tuner.status", "failed")
        client.set_tag(run_id, "tuner.status_detail", "failed: the trial's process failed")
        client.set_tag(run_id, "tuner.error", error)
    points = history.earlier_study(recorded.name, uri)[1]
    assert points == [(TRIALS[0][0], math.inf), (TRIALS[2][0], math.inf)]
    study = build_study({**yaml.safe_load(SPACE.format(data=recorded.data, uri=uri)),
                         "name": "next"})
    trials = history.optuna_trials(study, points)
    assert trials[0].state == optuna.trial.TrialState.COMPLETE and trials[0].value == math.inf


def test_warm_start_refuses_another_space(recorded):
    points = history.earlier_study(recorded.name, recorded.uri)[1]
    raw = yaml.safe_load(SPACE.format(data=recorded.data, uri=recorded.uri))
    raw["hparams"]["α_max"] = {"loguniform": [1.0e-4, 1.0e-2]}  # 0.02 no longer fits
    narrower = build_study({**raw, "name": "narrow"})
    with pytest.raises(UserError, match="does not fit this space"):
        history.optuna_trials(narrower, points)


def test_warm_start_names_a_parameter_the_earlier_study_did_not_search(recorded):
    points = history.earlier_study(recorded.name, recorded.uri)[1]
    raw = yaml.safe_load(SPACE.format(data=recorded.data, uri=recorded.uri))
    raw["hparams"]["λ"] = {"uniform": [0.0, 0.2]}
    wider = build_study({**raw, "name": "wider"})
    with pytest.raises(UserError, match="weight_decay is searched here, but the earlier study "
                                        "did not search it"):  # Optuna's said "FixedTrial object"
        history.optuna_trials(wider, points)


def test_warm_start_names_what_the_earlier_study_trained_otherwise(recorded):
    """Losses of another budget or model compare loosely: the warning lists the settings."""
    raw = yaml.safe_load(SPACE.format(data=recorded.data, uri=recorded.uri))
    earlier = history.earlier_study(recorded.name, recorded.uri)[0]
    same = build_study({**raw, "name": "same"})
    assert history.setup_differences(earlier, same) == []
    raw["budget"]["total_iters"] = 80
    raw["budget"]["seed"] = 7  # another seed is another draw of the same problem
    longer = build_study({**raw, "name": "longer"})
    assert history.setup_differences(earlier, longer) == [
        "budget.total_iters: 40 there, 80 here"]


def test_warm_start_leaves_out_values_the_conditions_do_not_use(recorded):
    """An earlier trial on the step schedule holds lr_min_ratio (tuner sampled it for every
    schedule before α_min was tied to the schedules that use it): the value is left out."""
    points = history.earlier_study(recorded.name, recorded.uri)[1]
    raw = yaml.safe_load(SPACE.format(data=recorded.data, uri=recorded.uri))
    raw["hparams"] |= {"schedule": {"choice": ["cosine", "step"]},
                       "lr_min_ratio": {"uniform": [0.0, 0.5]}}
    study = build_study({**raw, "name": "floors"})
    earlier = [({**p, "schedule": "step", "lr_min_ratio": 0.2}, v) for p, v in points]
    trials = history.optuna_trials(study, earlier)
    assert [t.params for t in trials] == [{**p, "schedule": "step"} for p, _ in points]


def _space_file(folder: Path, recorded, name: str, **search) -> Path:
    raw = yaml.safe_load(SPACE.format(data=recorded.data, uri=recorded.uri))
    raw["search"].update(search)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**raw, "name": name}, allow_unicode=True))
    return path


@pytest.mark.parametrize(("search", "flags", "message"), [
    ({}, ["--warm-start", "nosuch"], "no study 'nosuch'"),
    ({"warm_start": "tiny", "scheduler": "pbt"}, [], "search.warm_start"),
    ({}, ["--resume", "--warm-start", "tiny"], "no study 'again' to resume"),
])
def test_bad_warm_start_exits_2_before_anything_starts(recorded, tmp_path, search, flags,
                                                       message):
    space = _space_file(tmp_path, recorded, "again", **search)
    code, out = tuner("search", "--space", str(space), "--name", "again", "--storage",
                      str(tmp_path / "ray"), *flags)
    assert code == 2 and message in " ".join(out.split()), out
    assert not (tmp_path / "ray").exists()


def test_warm_start_outside_the_space_exits_2(recorded, tmp_path):
    space = _space_file(tmp_path, recorded, "narrow")
    raw = yaml.safe_load(space.read_text())
    raw["hparams"]["α_max"] = {"loguniform": [1.0e-4, 1.0e-2]}
    space.write_text(yaml.safe_dump(raw, allow_unicode=True))
    code, out = tuner("search", "--space", str(space), "--warm-start", "tiny", "--storage",
                      str(tmp_path / "ray"))
    assert code == 2 and "does not fit this space" in out and "lr_max=0.02" in out, out
    assert not (tmp_path / "ray").exists()


@pytest.mark.slow
def test_search_warm_started_from_an_earlier_study(tmp_path, byte_dataset, mlflow_store_template):
    """`tuner search --warm-start` on real Ray: the searcher's Optuna study (kept in a sqlite
    storage here) holds the earlier study's finished trials before its own."""
    import optuna
    from studies import run_tuner

    earlier = log_study(tmp_path, "earlier", byte_dataset, mlflow_store_template)
    space = _space_file(tmp_path, earlier, "warmed", algorithm="tpe", scheduler="none",
                        num_samples=2, max_concurrent=1,
                        storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    proc = run_tuner(["search", "--space", str(space), "--warm-start", "earlier", "--storage",
                      str(tmp_path / "ray")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warm start: 4 finished trials of study 'earlier'" in proc.stdout
    assert "trained otherwise" not in proc.stdout  # the same data, model and budget
    trials = optuna.load_study(study_name="warmed",
                               storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    points = history.earlier_study("earlier", earlier.uri)[1]
    assert [(t.params, t.value) for t in trials[:4]] == points
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"] * 2 + ["COMPLETE"] * 2
    client = MlflowClient(tracking_uri=earlier.uri)
    parent = runs.study_parent(client, "warmed")
    assert parent.data.tags["tuner.warm_start"] == "earlier"
    assert len(runs.trial_runs(client, parent)) == 2
