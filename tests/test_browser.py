"""study.html and MLflow's runs page as a real browser shows them after a real study (Ray, MLflow,
training): headless Chromium renders each, and the test reads the page's text, not its pixels."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from browser import browser, grid_rows, rendered, text
from services import mlflow_server
from studies import fresh_store, mlflow_runs, run_tuner, write_space

from tuner.inspect.report import STUDY_HTML
from tuner.store import runs
from tuner.store.layout import TRIAL_TAG
from tuner.store.view import runs_url

STUDY = "browser"
TRIALS = 4


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, dataset: Path,
          mlflow_store_template: Path) -> dict[str, Any]:
    """A study of four trials (ASHA stops some), searched and reported as a user would."""
    browser()  # skip before the study where there is no browser to show it
    folder = tmp_path_factory.mktemp("browser")
    uri = fresh_store(folder, mlflow_store_template)
    space = write_space(folder, STUDY, dataset,
                        hparams={"lr_max": {"loguniform": [1e-4, 3e-2]},
                                 "warmup_fraction": {"uniform": [0.0, 0.2]}},
                        search={"algorithm": "random", "num_samples": TRIALS, "scheduler": "asha",
                                "asha": {"grace_period": 10240, "reduction_factor": 2}})
    for command in (["search", "--space", str(space), "--storage", str(folder / "ray")],
                    ["report", "--study", STUDY, "--out", str(folder / "report")]):
        proc = run_tuner([*command, "--tracking-uri", uri], cwd=folder)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    client, parent, trials = mlflow_runs(uri, STUDY)
    return {"uri": uri, "folder": folder, "parent": parent, "trials": trials,
            "best": runs.best_of(trials, STUDY)}


def _table(dom: str, table_id: str) -> list[dict[str, str]]:
    """The rows of a rendered HTML table, each as {header: cell text}."""
    table = re.search(rf'<table[^>]*id="{table_id}".*?</table>', dom, re.DOTALL)
    assert table, dom[:2000]
    head = [text(h) for h in re.findall(r"<th.*?</th>", table.group(), re.DOTALL)]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.group().split("<tbody>")[1], re.DOTALL)
    return [dict(zip(head, map(text, re.findall(r"<td.*?</td>", row, re.DOTALL))))
            for row in rows]


@pytest.mark.slow
def test_study_page_names_the_winner_and_lists_each_trial(study, tmp_path):
    best, trials = study["best"], study["trials"]
    best_id = best.data.tags[TRIAL_TAG]
    best_loss = f"{runs.metric(best, 'best_val_loss'):.4f}"
    dom = rendered((study["folder"] / "report" / STUDY_HTML).as_uri(), tmp_path / "profile")
    assert f'<span id="best-trial">{best_id}</span>' in dom
    assert f"best val_loss {best_loss}" in text(dom)
    rows = _table(dom, "trials")
    assert len(rows) == len(trials) == TRIALS
    assert {row["MLflow run"] for row in rows} == {run.info.run_id for run in trials}
    assert (rows[0]["trial"], rows[0]["best val_loss"]) == (best_id, best_loss)


@pytest.mark.slow
def test_study_page_sorts_by_a_clicked_column(study, tmp_path):
    """Two clicks on "best val_loss" sort the trials worst first."""
    page = (study["folder"] / "report" / STUDY_HTML).read_text()
    click = ('<script>const th = [...document.querySelectorAll("#trials th")]'
             '.find((h) => h.textContent === "best val_loss"); th.click(); th.click();</script>')
    clicked = tmp_path / "clicked.html"
    clicked.write_text(page.replace("</body>", click + "</body>"))
    rows = _table(rendered(clicked.as_uri(), tmp_path / "profile"), "trials")
    losses = [float(row["best val_loss"].replace("–", "inf")) for row in rows]
    assert losses == sorted(losses, reverse=True) and len(rows) == TRIALS
    assert [row["#"] for row in rows] == [str(rank) for rank in range(TRIALS, 0, -1)]


@pytest.mark.slow
def test_mlflow_runs_page_shows_a_row_per_trial(study, tmp_path):
    """The page `tuner ui` links to, served by a real `mlflow server` on the study's store."""
    best, trials, parent = study["best"], study["trials"], study["parent"]
    with mlflow_server(study["uri"], tmp_path / "artifacts") as base:
        dom = rendered(runs_url(base, parent.info.experiment_id), tmp_path / "profile")
    rows = grid_rows(dom)
    assert set(rows) - {parent.info.run_id} == {run.info.run_id for run in trials}, \
        text(dom)[:3000]
    shown = rows[best.info.run_id]
    assert f"{STUDY}-{best.data.tags[TRIAL_TAG]}" in shown
    assert repr(runs.metric(best, "best_val_loss")) in shown, shown
