"""docs/quickstart.ipynb run as a user runs it, in a real Jupyter kernel (nbclient): a study on a
real Ray, its trials, best, a bit-exact replay, the report, the winner registered and loaded by
MLflow's API, and a second study in the same kernel; the live view one output, redrawn in place."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "quickstart.ipynb"


class Recording(NotebookClient):
    """A NotebookClient that also counts, by cell id, the display updates the kernel sent."""

    updates: dict[str, int]

    def process_message(self, msg: dict, cell: nbformat.NotebookNode, cell_index: int) -> None:
        if msg["msg_type"] == "update_display_data":
            self.updates[cell.id] = self.updates.get(cell.id, 0) + 1
        return super().process_message(msg, cell, cell_index)


def _result(cell: nbformat.NotebookNode) -> str:
    """The text of a cell's value (its execute_result)."""
    found = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert len(found) == 1, cell.outputs
    return found[0].data["text/plain"]


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, int]]:
    """The quickstart notebook executed in a kernel started in an empty folder: its cells by id,
    and the display updates of each."""
    folder = tmp_path_factory.mktemp("notebook")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = Recording(notebook, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(folder)}})
    client.updates = {}
    with pytest.MonkeyPatch.context() as env:  # the notebook's own store: ./mlflow.db
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        client.execute()
    nbformat.write(notebook, folder / "executed.ipynb")  # to look at when a test fails
    return {cell.id: cell for cell in notebook.cells}, client.updates, folder


@pytest.mark.slow
def test_the_quickstart_notebook_runs_in_a_real_kernel(executed):
    cells, _, folder = executed
    status, best, loss = ast.literal_eval(_result(cells["search"]))
    assert status == "finished" and 0 < loss < 10
    assert f"{best}" in _result(cells["trials"]) and "rank" in _result(cells["trials"])
    assert f"trial_id='{best}'" in _result(cells["best"])
    assert ast.literal_eval(_result(cells["replay"]))[:2] == (True, 0.0)
    assert "study.html" in ast.literal_eval(_result(cells["report"]))
    (text,) = ast.literal_eval(_result(cells["register"]))
    assert isinstance(text, str) and text
    assert ast.literal_eval(_result(cells["second"])) == ("finished", 2)
    assert (folder / "mlflow.db").is_file() and (folder / "reports" / "quickstart-nb").is_dir()


@pytest.mark.slow
def test_the_live_view_is_one_output_redrawn_in_place(executed):
    """Each study's cell holds one display of the view, updated as the trials went (its last
    frame: every trial finished), and no line per trial."""
    cells, updates, _ = executed
    for cell_id, trials in (("search", 4), ("second", 2)):
        views = [o for o in cells[cell_id].outputs if o.output_type == "display_data"
                 and o.data.get("text/plain", "").startswith("study quickstart-nb")]
        assert len(views) == 1, json.dumps(cells[cell_id].outputs, default=str)[:4000]
        frame = views[0].data["text/plain"]
        assert "text/html" in views[0].data and "best val_loss" in frame
        assert sum(frame.count(word) for word in (" completed", " stopped")) >= trials, frame
        assert updates.get(cell_id, 0) >= 2
        streams = "".join(o.get("text", "") for o in cells[cell_id].outputs
                          if o.output_type == "stream")
        assert "its best val_loss" not in streams
