"""`tuner search --resume --name NAME --num-samples M` extends a study of N < M samples
(tuner/search/state/extension.py): the same searcher, scheduler state, MLflow parent and trial
numbering; what cannot be extended is refused before anything starts (exit 2)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from inspect_study import SPACE as STUDY
from inspect_study import tuner
from studies import fresh_store, mlflow_runs, run_tuner

from tuner.search.state import state
from tuner.space import load_study

SPACE = """name: grown
data: {source: synthetic}
model: {vocab_size: 512, context_length: 32, d_model: 32, num_layers: 1, num_heads: 2}
hparams:
  lr_max: {loguniform: [1.0e-4, 1.0e-2]}
budget: {total_iters: 40, eval_tokens: 5120}
"""


@pytest.mark.slow
def test_a_finished_study_extended_runs_the_samples_it_lacks(
        tmp_path: Path, byte_dataset: Path, mlflow_store_template: Path) -> None:
    """A finished TPE + ASHA study of 2 samples, resumed with --num-samples 4, runs 2 more: under
    the same parent, proposed by the same Optuna study (its trials 0-3), numbered on by Tune
    (3 and 4), and saved with 4 samples, so that a later --resume is the extension's."""
    import ray.cloudpickle as cloudpickle

    uri, storage = fresh_store(tmp_path, mlflow_store_template), tmp_path / "ray"
    space = tmp_path / "grown.yaml"
    space.write_text("name: grown\n" + STUDY.format(data=byte_dataset, uri=uri).replace(
        "algorithm: random", "algorithm: tpe").replace("num_samples: 4", "num_samples: 2"))
    first = run_tuner(["search", "--space", str(space), "--storage", str(storage)], cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    _, parent, before = mlflow_runs(uri, "grown")
    proc = run_tuner(["search", "--resume", "--name", "grown", "--storage", str(storage),
                      "--num-samples", "4"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, again, after = mlflow_runs(uri, "grown")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["tuner.extended"] == "2 → 4"
    assert again.data.metrics["study/trials_finished"] == 4
    old = {r.info.run_id: r.info.end_time for r in before}
    assert {r.info.run_id: r.info.end_time for r in after if r.info.run_id in old} == old
    assert len(after) == 4 and all(r.info.status == "FINISHED" for r in after)
    folder = storage / "grown"
    searcher = cloudpickle.loads(max(folder.glob("searcher-state-*.pkl")).read_bytes())
    proposed = searcher["_ot_study"].trials
    assert [trial.number for trial in proposed] == [0, 1, 2, 3]
    assert _values([t.params for t in proposed[:2]]) == _values([r.data.params for r in before])
    assert _values([t.params for t in proposed]) == _values([r.data.params for r in after])
    saved = json.loads(max(folder.glob("experiment_state-*.json")).read_text())
    numbers = {json.loads(trial)["trial_id"]: int(json.loads(trial)["experiment_tag"].split("_")[0])
               for trial, _ in saved["trial_data"]}
    assert {numbers[r.data.tags["tuner.trial_id"]] for r in before} == {1, 2}
    assert sorted(numbers.values()) == [1, 2, 3, 4]
    assert json.loads((folder / state.STATE_FILE).read_text())["overrides"]["num_samples"] == 4


def _values(params: list[dict]) -> set[tuple[float, int]]:
    """The searched values of trials (Optuna's, or MLflow's params as text), comparable."""
    return {(round(float(p["lr_max"]), 12), int(p["batch_size"])) for p in params}


def _saved(tmp_path: Path, text: str, *tune_files: str) -> Path:
    """The storage of a study saved as started from `text`, one trial ran, with Tune's state
    files `tune_files` (whole: a dict pickled, or {} as JSON)."""
    space = tmp_path / "grown.yaml"
    space.write_text(text)
    folder = tmp_path / "ray" / "grown"
    state.save(folder, load_study(space), {})
    (folder / state.TUNE_STATE).write_bytes(pickle.dumps({}))
    (folder / "trial_0a1b2c3d").mkdir()
    for name in tune_files:
        (folder / name).write_bytes(b"{}" if name.endswith(".json") and "experiment" in name
                                    else pickle.dumps({}))
    return folder.parent


TUNE_FILES = ("experiment_state-2026-11-27_10-00-00.json",
              "search_gen_state-2026-11-27_10-00-00.json",
              "searcher-state-2026-11-27_10-00-00.pkl", "scheduler-state.pkl")


@pytest.mark.parametrize(("search", "files", "num_samples", "message"), [
    ("{num_samples: 4}", TUNE_FILES, 3,
     "--num-samples 3: study 'grown' has 4 samples already, and a study is extended, never cut"),
    ("{num_samples: 4, scheduler: hyperband}", TUNE_FILES, 6,
     "uses HyperBand, whose brackets Ray Tune does not save: it can be neither resumed nor "
     "extended. Run the samples it lacks as a new study that builds on it: tuner search --space "
     "FILE --name NEW --num-samples 2 --warm-start grown"),
    ("{num_samples: 4, scheduler: pbt, algorithm: random}", TUNE_FILES[:1], 6,
     "uses PBT, whose population is fixed as it starts"),
    ("{num_samples: 4, algorithm: grid}", TUNE_FILES, 5,
     "searches a grid of 4 points, each run once; every point of it ran: there is nothing to add"),
    ("{num_samples: 2, algorithm: grid}", TUNE_FILES, 5,
     "searches a grid of 4 points, each run once; it can be extended to 4 samples at most"),
    ("{num_samples: 4, scheduler: asha}", TUNE_FILES[:3], 6,
     "was made by an older tuner, whose saved state lacks ASHA's rungs (scheduler-state.pkl)"),
    ("{num_samples: 4, scheduler: median}", (TUNE_FILES[0], TUNE_FILES[3]), 6,
     "lacks Ray Tune's search state (search_gen_state-*.json)"),
])
def test_a_study_that_cannot_take_the_samples_is_refused(tmp_path: Path, search: str,
                                                         files: tuple[str, ...], num_samples: int,
                                                         message: str) -> None:
    """Fewer samples than the study has; HyperBand and PBT; a grid with fewer points left; the
    state of an older tuner, without ASHA's rungs or Tune's count: exit 2 before Ray starts,
    each saying what to do instead, nothing written."""
    hparams = "hparams: {lr_max: {grid: [1.0e-4, 1.0e-3, 3.0e-3, 1.0e-2]}}\n"
    text = SPACE.replace("hparams:\n  lr_max: {loguniform: [1.0e-4, 1.0e-2]}\n", hparams) \
        if "grid" in search else SPACE
    storage = _saved(tmp_path, f"{text}search: {search}\n", *files)
    written = sorted((p, p.stat().st_mtime_ns) for p in storage.rglob("*"))
    code, out = tuner("search", "--resume", "--name", "grown", "--storage", str(storage),
                      "--num-samples", str(num_samples))
    assert code == 2 and message in " ".join(out.split()), out
    assert sorted((p, p.stat().st_mtime_ns) for p in storage.rglob("*")) == written


def test_a_running_study_is_not_extended(tmp_path: Path) -> None:
    """Another driver holds the study: refused, naming that process, whatever the option asks."""
    storage = _saved(tmp_path, f"{SPACE}search: {{num_samples: 4}}\n", *TUNE_FILES)
    with state.driven(storage / "grown"):
        code, out = tuner("search", "--resume", "--name", "grown", "--storage", str(storage),
                          "--num-samples", "8")
    assert code == 2 and "study 'grown' is running: another `tuner search` (pid" in out, out
