"""`tuner best --register` and `tuner.register`: a seed-checked winner as a version of an MLflow
registered model, loaded in a fresh process by MLflow's own API on a sqlite store and on an
`mlflow server` backed by PostgreSQL; MLflow's UI showing it, and the seed-check runs among the
ranked trials; the refusals (exit 2, nothing written). The study is recorded without Ray."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser import browser, grid_rows, rendered, text
from inspect_study import TRIALS, log_study, tuner, write_malicious_checkpoint
from mlflow import MlflowClient
from services import ServiceUnavailable, free_port, mlflow_server, postgres_server

import tuner as api
from tuner.errors import UserError
from tuner.search.winners import seed_check
from tuner.store import runs
from tuner.store.layout import CONFIRMS_RUN_TAG
from tuner.store.view import runs_url, save_view

pytest_plugins = ["inspect_study"]

MODEL = "quickstart-lm"
PROMPTS = ["Once upon a time", "ROMEO:"]
# What a machine with torch, MLflow and this package runs: MLflow's API alone
LOAD = """
import json, sys
import mlflow

texts = mlflow.pyfunc.load_model(sys.argv[1]).predict(json.loads(sys.argv[2]))
print(json.dumps({"texts": texts, "flavors": sorted(mlflow.models.Model.load(sys.argv[1]).flavors),
                  "imported": sorted(m for m in ("ray", "optuna", "tuner.api", "tuner.search")
                                     if m in sys.modules)}))
"""


def loaded(uri: str, model_uri: str, cwd: Path) -> dict:
    """What LOAD prints for `model_uri`, run in a fresh Python on the store `uri`."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run([sys.executable, "-c", LOAD, model_uri, json.dumps(PROMPTS)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tokenized, mlflow_store_template):
    """Two completed trials and a stopped one, seed-checked and the winner registered by one
    `tuner best --confirm 2 --seeds 1 --register quickstart-lm`: (its record, its output)."""
    study = log_study(tmp_path_factory.mktemp("registry"), "regstudy", tokenized,
                      mlflow_store_template, trials=TRIALS[:3])
    code, out = tuner("best", "--study", study.name, "--confirm", "2", "--seeds", "1",
                      "--register", MODEL, "--tracking-uri", study.uri)
    assert code == 0, out
    return study, out


@pytest.mark.slow
def test_the_winner_loads_in_a_fresh_process_as_text(registered, tmp_path):
    """mlflow.pyfunc gives the text `tuner generate --run` gives, without importing Ray, Optuna
    or tuner's commands; the model has no other flavor (no pt2 archive, whose loader unpickles)."""
    study, _ = registered
    got = loaded(study.uri, f"models:/{MODEL}/1", tmp_path)
    assert got["texts"] == [api.generate(study.best_run_id, prompt, device="cpu",
                                         tracking_uri=study.uri) for prompt in PROMPTS]
    assert all(got["texts"]) and got["imported"] == []
    assert got["flavors"] == ["python_function"]


def test_the_version_says_where_it_came_from_and_how_to_reproduce_it(registered):
    study, out = registered
    client = MlflowClient(tracking_uri=study.uri)
    version = client.get_model_version(MODEL, "1")
    best = client.get_run(study.best_run_id)
    checked = seed_check.recorded(client, client.get_run(study.parent_id))
    tags = version.tags
    assert version.run_id == study.best_run_id
    assert tags["tuner.study"] == study.name
    assert tags["tuner.trial_id"] == best.data.tags["tuner.trial_id"]
    assert float(tags["tuner.val_loss"]) == runs.metric(best, "best_val_loss")
    assert tags["tuner.seed_check"].startswith(checked.verdict) and "over 2 seeds" in \
        tags["tuner.seed_check"]
    assert tags["tuner.reproduce"] == f"tuner replay {study.best_run_id} --tracking-uri " \
        f"{study.uri}"
    assert tags["tuner.checkpoint_sha256"] == best.data.tags["tuner.checkpoint_sha256"]
    assert f"`{tags['tuner.reproduce']}`" in version.description
    assert f'mlflow.pyfunc.load_model("models:/{MODEL}/1")' in version.description
    assert f"Seed check: {tags['tuner.seed_check']}." in version.description
    assert f"as version 1 of MLflow model {MODEL}" in out
    assert not re.search(r"(INFO|WARNING) mlflow", out), out  # MLflow's pip and uv lines
    # the trial run that trained it lists the model among its outputs (MLflow's lineage)
    outputs = {o.model_id for o in client.get_run(study.best_run_id).outputs.model_outputs}
    model_id = version.source.removeprefix("models:/")
    assert model_id in outputs  # with version 2's where the test making it ran first
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == study.best_run_id and logged.params == best.data.params


@pytest.mark.slow
def test_registering_again_through_the_api_makes_version_2(registered):
    study, _ = registered
    again = api.register(study.name, MODEL, tracking_uri=study.uri)
    assert (again.version, again.uri, again.run_id) == ("2", f"models:/{MODEL}/2",
                                                        study.best_run_id)
    versions = MlflowClient(tracking_uri=study.uri).search_model_versions(f"name = '{MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]


@pytest.mark.parametrize("name", ["a/b", "a:b", " "])
def test_a_name_mlflow_refuses_exits_2_before_anything_is_written(registered, name):
    study, _ = registered
    client = MlflowClient(tracking_uri=study.uri)
    models = len(client.search_logged_models([client.get_run(study.parent_id).info.experiment_id]))
    code, out = tuner("best", "--study", study.name, "--register", name, "--tracking-uri",
                      study.uri)
    assert code == 2 and f"--register {name!r}: MLflow refuses it as a model name" in out, out
    assert "best trials" not in out  # refused before the table
    assert len(client.search_logged_models([client.get_run(
        study.parent_id).info.experiment_id])) == models


def test_a_study_without_a_usable_best_and_a_store_not_there_exit_2(tmp_path, tokenized,
                                                                    mlflow_store_template):
    """A stopped best trial has no checkpoint to register; a diverged one is no best at all."""
    study = log_study(tmp_path, "unfinished", tokenized, mlflow_store_template,
                      trials=TRIALS[1:2])
    code, out = tuner("best", "--study", study.name, "--register", MODEL, "--tracking-uri",
                      study.uri)
    assert code == 2 and f"run {study.best_run_id} has no checkpoint recorded" in out, out
    client = MlflowClient(tracking_uri=study.uri)
    client.set_tag(study.best_run_id, "tuner.status", "diverged")
    code, out = tuner("best", "--study", study.name, "--register", MODEL, "--tracking-uri",
                      study.uri)
    assert code == 2 and "has no trial with a finite val_loss that neither diverged" in out, out
    assert client.search_registered_models() == []
    down = f"http://127.0.0.1:{free_port()}"
    code, out = tuner("best", "--study", study.name, "--register", MODEL, "--tracking-uri", down)
    assert code == 2 and f"tracking server {down} is not reachable" in out, out


@pytest.mark.slow
def test_mlflow_ui_shows_the_model_and_the_seed_checks_among_the_ranked_trials(registered,
                                                                             tmp_path):
    """The registered model's page, and the runs page `tuner ui` links to: each seed-check run a
    row of its own, named after its trial and seed, showing its trial's values and its own
    best_val_loss, ranked with the trials."""
    browser()
    study, _ = registered
    client = MlflowClient(tracking_uri=study.uri)
    parent = client.get_run(study.parent_id)
    save_view(client, parent.info.experiment_id)  # as `tuner ui` does
    checks = seed_check.confirmations(client, parent)
    with mlflow_server(study.uri, tmp_path / "artifacts") as base:
        model_page = text(rendered(f"{base}/#/models/{MODEL}", tmp_path / "profile"))
        dom = rendered(runs_url(base, parent.info.experiment_id), tmp_path / "profile",
                       window="3200,1200")
    assert MODEL in model_page and "Version 1" in model_page, model_page[:3000]
    rows = grid_rows(dom)
    order = [run_id for run_id in dict.fromkeys(part.partition('"')[0]
                                                for part in dom.split('row-id="')[1:])]
    assert len(checks) == 2 and {c.info.run_id for c in checks} <= set(rows), text(dom)[:3000]
    for check in checks:
        trial = client.get_run(check.data.tags[CONFIRMS_RUN_TAG])
        shown = rows[check.info.run_id]
        assert f"{trial.info.run_name}-seed1" in shown
        assert repr(runs.metric(check, "best_val_loss")) in shown, shown
        columns = [n for n in trial.data.tags["tuner.searched"].split(",") if n in
                   trial.data.params]  # this study logs lr_max and batch_size as params
        assert columns and all(trial.data.params[n] in shown and trial.data.params[n] in
                               rows[trial.info.run_id] for n in columns), shown
    ranked = [r for r in order if r != parent.info.run_id]
    losses = [runs.metric(client.get_run(r), "best_val_loss") for r in ranked]
    assert losses == sorted(losses) and len(ranked) == len(study.run_ids) + len(checks)


@pytest.mark.slow
def test_registered_on_an_mlflow_server_backed_by_postgres(tmp_path, tokenized,
                                                           mlflow_store_template):
    try:
        with postgres_server() as pg, mlflow_server(pg.uri, tmp_path / "artifacts") as uri:
            study = log_study(tmp_path / "study", "served", tokenized, mlflow_store_template,
                              trials=TRIALS[:1], uri=uri)
            code, out = tuner("best", "--study", study.name, "--register", MODEL,
                              "--tracking-uri", uri)
            assert code == 0 and f"as version 1 of MLflow model {MODEL}" in out, out
            got = loaded(uri, f"models:/{MODEL}/1", tmp_path)
            assert got["texts"] == [api.generate(study.best_run_id, prompt, device="cpu",
                                                 tracking_uri=uri) for prompt in PROMPTS]
            assert got["flavors"] == ["python_function"]
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))


def _versions(study) -> int:
    return len(MlflowClient(tracking_uri=study.uri).search_model_versions(f"name = '{MODEL}'"))


def test_a_tokenizer_other_than_the_one_trained_with_is_refused_naming_it(registered, corpora,
                                                                         tmp_path):
    """GPT-2's (ids beyond the model's 256), and the study's own with two vocab.json entries
    swapped (its meta.json left as it was): exit 2 naming the file, nothing registered."""
    from test_generate_cmd import swap_two_tokens

    study, _ = registered
    before = _versions(study)
    swapped = tmp_path / "swapped"
    shutil.copytree(study.data, swapped)
    swap_two_tokens(swapped)
    beyond = "has ids (e.g. 256) beyond the model's vocabulary of 256: not its tokenizer"
    for data, said in ((corpora / "gpt2", beyond),
                       (swapped, "and merges.txt: not the tokenizer")):
        code, out = tuner("best", "--study", study.name, "--register", MODEL, "--data",
                          str(data), "--tracking-uri", study.uri)
        assert code == 2 and f"{data / 'vocab.json'}" in out and said in " ".join(out.split()), out
    assert _versions(study) == before


def test_a_checkpoint_recording_no_tokenizer_is_refused(registered, tmp_path):
    """Without the sha256 of the tokenizer it trained with there is nothing to check one
    against: refused, named."""
    from tuner.inspect.generate import load_model, tokenizer_of

    study, _ = registered
    checkpoint = runs.checkpoint_file(MlflowClient(tracking_uri=study.uri), MlflowClient(
        tracking_uri=study.uri).get_run(study.best_run_id), "final", tmp_path)
    _, config, trained_with = load_model(checkpoint, "cpu")
    assert trained_with is not None
    tokenizer_of(checkpoint, config, None, study.data)  # generate's: a folder of its own
    with pytest.raises(UserError, match="records no sha256 of the tokenizer it trained with"):
        tokenizer_of(checkpoint, config, None, study.data, recorded=True)


def test_register_checks_its_arguments_and_names_them_as_python_does(registered):
    study, _ = registered
    with pytest.raises(UserError, match=r"register: model 123 is not a string"):
        api.register("tiny", 123)
    with pytest.raises(UserError, match=r"register: name None is not a string"):
        api.register(None, MODEL)
    with pytest.raises(UserError) as refused:
        api.register(study.name, "a/b", tracking_uri=study.uri)
    assert str(refused.value).startswith("model 'a/b': MLflow refuses it as a model name")
    assert "--register" not in str(refused.value)


def test_a_registered_model_whose_files_were_altered_does_not_load(registered, tmp_path):
    """Its pyfunc checks each file's sha256, recorded at registration, before reading any: a
    pickle planted as its checkpoint is refused, named, and its code does not run."""
    from mlflow.artifacts import download_artifacts

    study, _ = registered
    stored = MlflowClient(tracking_uri=study.uri).get_model_version_download_uri(MODEL, "1")
    local = Path(download_artifacts(stored, dst_path=str(tmp_path / "copy")))
    checkpoint, marker = next(local.rglob("checkpoint.pt")), tmp_path / "ran"
    write_malicious_checkpoint(checkpoint, marker)
    load = "import mlflow, sys; mlflow.pyfunc.load_model(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", load, str(local)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0 and f"{checkpoint}: not the file registered" in proc.stderr, \
        proc.stderr[-3000:]
    assert not marker.exists()
