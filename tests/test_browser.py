"""study.html and MLflow's runs page as a real browser shows them after a real study (Ray, MLflow,
training): headless Chromium renders each, and the test reads the page's text, not its pixels."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from services import mlflow_server
from studies import fresh_store, mlflow_runs, run_tuner, write_space

from tuner.inspect.report import STUDY_HTML
from tuner.store import runs
from tuner.store.layout import TRIAL_TAG
from tuner.store.view import runs_url

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
STUDY = "browser"
TRIALS = 4


def browser() -> str:
    """The Chromium on PATH; skips the test where there is none."""
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it "
                    "where it runs as root): the browser tests need a real browser")
    return found


def rendered(url: str, profile: Path, budget_ms: int = 30_000) -> str:
    """The DOM of `url` once headless Chromium has run its scripts (up to `budget_ms` of the
    page's virtual time, which stands still while a request is open)."""
    command = [browser(), "--headless", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", f"--user-data-dir={profile}",
               f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout, proc.stderr[-4000:]
    return proc.stdout


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
    head = [_text(h) for h in re.findall(r"<th.*?</th>", table.group(), re.DOTALL)]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table.group().split("<tbody>")[1], re.DOTALL)
    return [dict(zip(head, map(_text, re.findall(r"<td.*?</td>", row, re.DOTALL))))
            for row in rows]


def _grid_rows(dom: str) -> dict[str, str]:
    """The text of each row of MLflow's runs grid, by run id (a row's cells lie in several
    containers, one per pinned side, each marked with the row's id)."""
    rows: dict[str, str] = {}
    for part in dom.split('row-id="')[1:]:
        run_id, _, rest = part.partition('"')
        rows[run_id] = rows.get(run_id, "") + " " + _text(">" + rest)
    return rows


def _text(fragment: str) -> str:
    return " ".join(re.sub(r"<[^>]*>", " ", fragment).split())


@pytest.mark.slow
def test_study_page_names_the_winner_and_lists_each_trial(study, tmp_path):
    best, trials = study["best"], study["trials"]
    best_id = best.data.tags[TRIAL_TAG]
    best_loss = f"{runs.metric(best, 'best_val_loss'):.4f}"
    dom = rendered((study["folder"] / "report" / STUDY_HTML).as_uri(), tmp_path / "profile")
    assert f'<span id="best-trial">{best_id}</span>' in dom
    assert f"best val_loss {best_loss}" in _text(dom)
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
    rows = _grid_rows(dom)
    assert set(rows) - {parent.info.run_id} == {run.info.run_id for run in trials}, \
        _text(dom)[:3000]
    shown = rows[best.info.run_id]
    assert f"{STUDY}-{best.data.tags[TRIAL_TAG]}" in shown
    assert repr(runs.metric(best, "best_val_loss")) in shown, shown
