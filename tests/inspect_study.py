"""A small real study in the MLflow layout `tuner search` writes
(tuner/search/record/tracking.py), made without Ray: each trial is a real `train()` of a tiny
model, logged by MlflowClient to a real store.

Used by the replay, best/report and generate tests, which need finished trials quickly; also
their in-process `tuner` runner and a checkpoint crafted to run code when unpickled.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from model.checkpoint import CHECKPOINT_NAME, file_sha256
from model.config import HPARAMS
from model.train import train
from tuner.search.record.provenance import provenance
from tuner.space import build_study
from tuner.store.layout import METRICS, ROLE_TAG, STATUS_TAG, STUDY_TAG, TRIAL_TAG

SPACE = """\
data: {{path: {data}}}
model: {{vocab_size: 256, context_length: 32, d_model: 32, num_layers: 1, num_heads: 2, d_ff: 64}}
hparams:
  α_max: {{loguniform: [1.0e-3, 3.0e-2]}}
  warmup_fraction: {{uniform: [0.0, 0.2]}}
  B: {{choice: [4, 8]}}
budget: {{total_iters: 40, eval_tokens: 1280, eval_windows: 8, seed: 0}}
search: {{algorithm: random, scheduler: asha, num_samples: 4}}
resources: {{device: cpu}}
tracking: {{uri: {uri}}}
"""
# (searched params, evaluations after which ASHA stops it, or None to run it through)
TRIALS = [({"lr_max": 0.02, "warmup_fraction": 0.1, "batch_size": 8}, None),
          ({"lr_max": 0.002, "warmup_fraction": 0.05, "batch_size": 4}, 2),
          ({"lr_max": 0.01, "warmup_fraction": 0.0, "batch_size": 4}, None),
          ({"lr_max": 0.005, "warmup_fraction": 0.15, "batch_size": 8}, 2)]


@dataclass
class RecordedStudy:
    """What the helper wrote: the study name, its parent run and its trial runs (in order)."""

    name: str
    uri: str
    data: Path
    parent_id: str
    run_ids: list[str] = field(default_factory=list)
    best_run_id: str = ""


def log_study(work: Path, name: str, data: Path, template: Path, trials: list = TRIALS,
              val_offset: float = 0.0, uri: str | None = None) -> RecordedStudy:
    """Train and log `trials` of the SPACE study as `tuner search` would, to a store in `work`
    copied from the migrated `template` (or to the `mlflow server` at `uri`, which keeps the
    artifacts); return the record. `val_offset` is added to every logged val_loss (a record no
    replay can match)."""
    from mlflow import MlflowClient
    from studies import fresh_store

    served = uri is not None
    uri = uri or fresh_store(work, template)
    client = MlflowClient(tracking_uri=uri)
    text = SPACE.format(data=data, uri=uri)
    study = build_study({**yaml.safe_load(text), "name": name}, source_text=text)
    prov = provenance(data, json.loads((data / "meta.json").read_text()))
    exp = client.create_experiment(name, artifact_location=None if served else
                                   (work / "artifacts").as_uri())
    parent = client.create_run(exp, run_name=name, tags={
        STUDY_TAG: name, ROLE_TAG: "study", "tuner.git_commit": prov["git_commit"],
        "tuner.dataset_sha256": prov["dataset_sha256"]}).info.run_id
    client.log_text(parent, text, "space.yaml")
    client.log_dict(parent, study.resolved(), "study.json")
    client.log_dict(parent, prov["dataset_meta"], "dataset_meta.json")
    record = RecordedStudy(name, uri, data, parent)
    best = (float("inf"), "")
    for index, (params, stop_after) in enumerate(trials):
        run_id, value = _log_trial(client, (exp, parent), study, prov, index, params,
                                   stop_after, work / f"trial_{index}", val_offset)
        record.run_ids.append(run_id)
        best = min(best, (value, run_id))
    client.set_tag(parent, "tuner.best_run_id", best[1])
    client.set_terminated(parent, "FINISHED")
    record.best_run_id = best[1]
    return record


def _log_trial(client: Any, where: tuple[str, str], study: Any, prov: dict, index: int,
               params: dict, stop_after: int | None, work: Path,
               val_offset: float) -> tuple[str, float]:
    from mlflow.entities import Metric, Param

    config = study.trial_config(params, prov["data_dir"])
    values = {**config.to_dict(), **config.to_dict()["model"]}
    trial_id = f"trial{index:05d}"
    exp, parent = where
    run_id = client.create_run(exp, run_name=f"{study.name}-{trial_id}", tags={
        "mlflow.parentRunId": parent, STUDY_TAG: study.name,
        ROLE_TAG: "trial", TRIAL_TAG: trial_id, STATUS_TAG: "running",
        "tuner.seed": str(config.seed),
        "tuner.dataset_sha256": prov["dataset_sha256"], "tuner.git_commit": prov["git_commit"],
        "tuner.searched": ",".join(sorted(params)), "tuner.threads": "1", "tuner.device": "cpu",
        **{f"tuner.symbol.{n}": spec.symbol for n, spec in HPARAMS.items()}}).info.run_id
    client.log_batch(run_id, params=[Param(n, "None" if values[n] is None else str(values[n]))
                                     for n in HPARAMS])
    client.log_dict(run_id, config.to_dict(), "trial_config.json")
    client.log_dict(run_id, params, "searched.json")
    ckpt = work / "checkpoint"
    ckpt.mkdir(parents=True)
    budget = config.steps * config.tokens_per_step
    best, evals = float("inf"), 0

    def on_eval(record: Any) -> bool:
        nonlocal best, evals
        evals += 1
        metrics = {k: v for k, v in record.as_metrics().items() if k in METRICS}
        metrics["val_loss"] += val_offset
        if metrics["val_loss"] < best:
            best = metrics["best_val_loss"] = metrics["val_loss"]
        client.log_batch(run_id, metrics=[Metric(k, float(v), _now(), record.tokens)
                                          for k, v in metrics.items()])
        if 2 * record.tokens >= budget and record.tokens < budget and \
                "tuner.checkpoint_mid_sha256" not in client.get_run(run_id).data.tags:
            mid = work / "mid"
            mid.mkdir()
            shutil.copy(ckpt / CHECKPOINT_NAME, mid / CHECKPOINT_NAME)
            client.set_tag(run_id, "tuner.checkpoint_mid_sha256",
                           file_sha256(mid / CHECKPOINT_NAME))
            client.log_artifact(run_id, str(mid / CHECKPOINT_NAME), "checkpoint_mid")
        return stop_after is not None and evals >= stop_after

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(config, on_eval=on_eval, checkpoint_dir=ckpt)
    finally:
        torch.set_num_threads(threads)
    client.set_tag(run_id, STATUS_TAG, result.status)
    if result.status == "completed":
        client.set_tag(run_id, "tuner.checkpoint_sha256", file_sha256(ckpt / CHECKPOINT_NAME))
        client.log_artifact(run_id, str(ckpt / CHECKPOINT_NAME), "checkpoint")
    client.set_terminated(run_id, "FINISHED")
    return run_id, best


def _now() -> int:
    return int(time.time() * 1000)


def artifact_path(uri: str, run_id: str, path: str) -> Path:
    """Where a run's artifact lies on disk (the helper's stores keep artifacts in files)."""
    from urllib.parse import urlparse

    from mlflow import MlflowClient

    root = MlflowClient(tracking_uri=uri).get_run(run_id).info.artifact_uri
    return Path(urlparse(root).path) / path


def tuner(*args: str, columns: int = 250) -> tuple[int, str]:
    """Run the `tuner` CLI in this process, `columns` wide: (exit code, stdout and stderr)."""
    import io
    import os
    import sys
    from contextlib import redirect_stderr, redirect_stdout
    from unittest.mock import patch

    from tuner.cli import main

    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out), patch.object(sys, "argv", ["tuner", *args]), \
            patch.dict(os.environ, {"COLUMNS": str(columns)}):
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue()


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory, byte_dataset: Path,
             mlflow_store_template: Path) -> RecordedStudy:
    """The TRIALS study, logged once per test session to a sqlite store of its own."""
    return log_study(tmp_path_factory.mktemp("inspect_study"), "tiny", byte_dataset,
                     mlflow_store_template)


class _Payload:
    """Unpickling this calls Path.touch(marker): the kind of code a checkpoint must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_malicious_checkpoint(path: Path, marker: Path) -> None:
    """A checkpoint-shaped file whose unpickling runs code (creates `marker`)."""
    torch.save({"model": _Payload(marker), "iteration": 0, "config": {}}, path)
