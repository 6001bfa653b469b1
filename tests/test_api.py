"""The Python API (`import tuner`): a study given as a dict, searched on a real Ray and replayed;
a recorded study read as a DataFrame; bad input as typed exceptions with the CLI's messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from inspect_study import SPACE
from studies import ENV, fresh_store

import tuner
from tuner.api import COLUMNS

pytest_plugins = ["inspect_study"]  # the `recorded` study fixture

SEARCH = """\
import json, sys
import tuner

import os
study = tuner.load_study(json.loads(sys.argv[1]))
before = dict(os.environ)
result = tuner.search(study, name="viaapi", storage=sys.argv[2], quiet=True)
changed = sorted(k for k in {*before, *os.environ} if before.get(k) != os.environ.get(k))
frame = result.trials
again = tuner.replay(result.best)
print(json.dumps({
    "status": result.status, "exit_code": result.exit_code, "best": result.best.run_id,
    "best_config_lr": result.best.config.lr_max, "best_params": result.best.params,
    "rows": len(frame), "columns": list(frame.columns), "first": frame.iloc[0]["run_id"],
    "statuses": sorted(frame["status"]), "replay_ok": again.ok,
    "replay_diff": again.max_abs_diff, "replay_points": len(again.points),
    "environ_changed": changed}))
"""


@pytest.mark.slow
def test_a_study_given_as_a_dict_searched_then_replayed(tmp_path, byte_dataset,
                                                        mlflow_store_template):
    """tuner.search of a dict on a real Ray, quietly: its result names the best trial, which
    tuner.replay trains again to the same losses (on the CPU, exactly); os.environ is as it
    was before the study."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = yaml.safe_load(SPACE.format(data=byte_dataset, uri=uri))
    space["search"]["num_samples"] = 2
    proc = subprocess.run([sys.executable, "-c", SEARCH, json.dumps(space),
                           str(tmp_path / "ray")], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # quiet: no live view, no summary; only the script's
    assert "setting up its trials" not in proc.stderr
    got = json.loads(lines[0])
    assert got["status"] == "finished" and got["exit_code"] == 0
    assert got["environ_changed"] == []  # Ray's own RAY_AUTH_MODE, RAY_CLIENT_MODE were left
    assert got["rows"] == 2 and got["first"] == got["best"]
    assert got["columns"] == [*COLUMNS, "batch_size", "lr_max", "warmup_fraction"]
    assert got["best_config_lr"] == got["best_params"]["lr_max"]
    assert got["replay_ok"] and got["replay_diff"] == 0.0 and got["replay_points"] > 0
    # the dict's study was saved as a file, for resume=True
    assert (tmp_path / "ray" / "viaapi" / "space.yaml").is_file()


def test_trials_is_the_study_pages_table(recorded):
    frame = tuner.trials(recorded.name, tracking_uri=recorded.uri)
    assert list(frame.columns) == [*COLUMNS, "batch_size", "lr_max", "warmup_fraction"]
    assert len(frame) == 4 and list(frame.index) == [1, 2, 3, 4]
    assert set(frame["run_id"]) == set(recorded.run_ids)
    assert frame.iloc[0]["run_id"] == recorded.best_run_id
    assert list(frame["val_loss"]) == sorted(frame["val_loss"])
    assert (frame["reached_at"] <= frame["tokens"]).all() and (frame["reached_at"] > 0).all()
    assert frame["lr_max"].dtype.kind == "f" and frame["batch_size"].dtype.kind == "i"
    # B_simple at the end: measured at a completed trial's last evaluation, never by one stopped
    ended = frame.set_index("status")["noise_scale"]
    assert (ended["completed"] > 0).all() and ended["stopped"].isna().all()


def test_best_is_a_trial_with_its_config(recorded):
    best = tuner.best(recorded.name, tracking_uri=recorded.uri)
    assert isinstance(best, tuner.Trial) and best.run_id == recorded.best_run_id
    assert best.config is not None and best.config.lr_max == best.params["lr_max"]
    assert best.status == "completed" and best.tokens >= best.reached_at > 0
    assert recorded.uri not in repr(best)  # a store's URI may hold a password


def test_a_bad_dict_raises_the_files_message(tmp_path, byte_dataset):
    """A dict is checked as the same study written as a YAML file, with the same message (less
    the file's name and line)."""
    space = yaml.safe_load(SPACE.format(data=byte_dataset, uri="sqlite:///mlflow.db"))
    space["hparams"]["α_max"] = {"loguniform": [3.0e-2, 1.0e-3]}
    space["budget"]["eval_tokns"] = 1280
    with pytest.raises(tuner.SpaceError) as from_dict:
        tuner.load_study(space)
    file = tmp_path / "study.yaml"
    file.write_text(yaml.safe_dump(space, allow_unicode=True, sort_keys=False))
    with pytest.raises(tuner.SpaceError) as from_file:
        tuner.load_study(file)
    assert "hparams.lr_max" in str(from_dict.value) and "budget.eval_tokns" in str(from_dict.value)
    assert [i.message for i in from_dict.value.issues] == \
        [i.message for i in from_file.value.issues]
    assert all(i.line is None for i in from_dict.value.issues)


def test_a_dict_takes_tuples_and_a_name(byte_dataset):
    space = yaml.safe_load(SPACE.format(data=byte_dataset, uri="sqlite:///mlflow.db"))
    space["hparams"]["B"] = {"choice": (4, 8)}
    study = tuner.load_study(space, name="given")
    assert study.name == "given" and study.source_path is None
    assert yaml.safe_load(study.source_text)["hparams"]["B"] == {"choice": [4, 8]}  # as logged
    space["budget"]["seed"] = object()
    with pytest.raises(tuner.SpaceError, match="not a study"):
        tuner.load_study(space)


def test_a_missing_store_raises_tracking_error(tmp_path):
    with pytest.raises(tuner.TrackingError, match="no such file"):
        tuner.trials("tiny", tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")
    assert issubclass(tuner.TrackingError, tuner.UserError)  # the CLI exits 2 on it


def test_reading_imports_neither_ray_nor_torch(recorded, tmp_path):
    """tuner.trials and tuner.best, as `tuner best`, need neither (a second or more each)."""
    code = ("import sys, tuner\n"
            "print(sorted(m for m in ('mlflow', 'ray', 'torch') if m in sys.modules))\n"
            f"frame = tuner.trials({recorded.name!r}, tracking_uri={recorded.uri!r})\n"
            f"best = tuner.best({recorded.name!r}, tracking_uri={recorded.uri!r})\n"
            "print(len(frame), best.run_id)\n"
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", f"4 {recorded.best_run_id}", "[]"]


def test_tuner_search_and_probe_are_the_functions_after_their_packages_load():
    """The subpackages tuner.search and tuner.probe share the functions' names: importing them
    hides nothing."""
    from tuner.probe import run  # noqa: F401 - binds the subpackage as a package would
    from tuner.search import lifecycle  # noqa: F401

    for name in ("search", "probe"):
        function = getattr(tuner, name)
        assert callable(function) and function.__module__ == "tuner.api"
        assert Path(sys.modules[f"tuner.{name}"].__file__).name == "__init__.py"


def test_top_trials_are_the_best_tables_rows(recorded):
    """tuner.top_trials lists what `tuner best` does: the best first, without configs; a study
    with no seed check gives no trial one."""
    top = tuner.top_trials(recorded.name, 2, tracking_uri=recorded.uri)
    frame = tuner.trials(recorded.name, tracking_uri=recorded.uri)
    assert [t.run_id for t in top] == list(frame["run_id"][:2])
    assert top[0].run_id == recorded.best_run_id and top[0].usable
    assert all(t.config is None and t.seed_check is None for t in top)
    assert tuner.confirmation(recorded.name, tracking_uri=recorded.uri) is None


@pytest.mark.parametrize(("top", "seeds", "named"), [(0, 3, "--confirm 0"), (2, 0, "--seeds 0"),
                                                     (2, 101, "--seeds 101")])
def test_confirm_refuses_bad_counts_before_it_reads(tmp_path, top, seeds, named):
    with pytest.raises(tuner.UserError, match=named):
        tuner.confirm("tiny", top=top, seeds=seeds,
                      tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")


@pytest.mark.parametrize("k", [0, -1])
def test_top_trials_refuses_fewer_than_one_as_best_top_does(recorded, k):
    """k=-1 gave all trials but one, k=0 none (`tuner best --top` refuses both)."""
    with pytest.raises(tuner.UserError, match=f"k={k}: list 1 trial or more"):
        tuner.top_trials(recorded.name, k, tracking_uri=recorded.uri)


def test_a_stop_is_forgotten_once_the_study_it_stopped_returns(tmp_path, byte_dataset,
                                                               mlflow_store_template):
    """A SIGTERM recorded in a notebook's kernel stops the study it came in (before Ray starts,
    nothing to resume), and the next study there starts afresh rather than stopping at once."""
    from model import shell
    from tuner.search.faults import stopping

    space = yaml.safe_load(SPACE.format(data=byte_dataset,
                                        uri=fresh_store(tmp_path, mlflow_store_template)))
    before = {signum: signal.getsignal(signum) for signum in shell.STOP_SIGNALS}
    try:
        shell.stops_as_ctrl_c()  # as a study sets them
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert shell.stop_requested()
    with pytest.raises(KeyboardInterrupt):
        tuner.search(space, name="stopped", storage=tmp_path / "ray", quiet=True)
    assert not (tmp_path / "ray" / "stopped").exists()
    assert not shell.stop_requested()
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ  # a later cluster's driver's
    with stopping.stops_held():  # where the next study would have stopped at once
        pass
