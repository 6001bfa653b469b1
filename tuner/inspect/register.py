"""`tuner best --register NAME`: a study's best trial as a new version of an MLflow registered
model: its final checkpoint, tokenizer and model config, loadable by MLflow's own API
(tuner.store.registry), tagged with where it came from."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.shell import as_started
from tuner.store import registry, runs
from tuner.store.layout import DATASET_TAG, STUDY_TAG, TRIAL_TAG
from tuner.store.redact import redact
from tuner.store.rows import trial_row

# `tuner generate`'s defaults; each prompt's generator is seeded anew, so a prompt gives the same
# text every time, and the text `tuner generate --run TRIAL --prompt …` gives on a CPU
GENERATION = {"max_new_tokens": 64, "temperature": 0.8, "top_p": 0.95, "seed": 0, "device": "cpu"}


@dataclass(frozen=True)
class Registered:
    """A registered model version: its name and number, and the trial it holds."""

    model: str
    version: str
    study: str
    trial_id: str
    run_id: str
    val_loss: float

    @property
    def uri(self) -> str:
        """What `mlflow.pyfunc.load_model` takes."""
        return f"models:/{self.model}/{self.version}"


def register_best(client: Any, study: str, model: str, workdir: Path, *,
                  seed_checks: Mapping[str, str], data: Path | None = None,
                  named: str = "--register") -> Registered:
    """Register study `study`'s best trial as a new version of model `model` (`seed_checks`: the
    seed check of each seed-checked trial in words, by run id; `named`: how the caller names
    `model`); UserError, before anything is written, for a name MLflow refuses, a study with no
    best trial, a trial without its checkpoint, or a tokenizer other than the one it trained
    with."""
    from tuner.inspect.generate import load_model, tokenizer_of

    registry.check_name(client, model, named)
    run = runs.best_trial(client, study)
    runs.reproducible_config(client, run, workdir, "registered")  # not a PBT trial's
    checkpoint = runs.checkpoint_file(client, run, "final", workdir)
    _, config, trained_with = load_model(checkpoint, "cpu")
    tokenizer = tokenizer_of(checkpoint, config, trained_with, data, recorded=True)
    folder = workdir / "tokenizer"
    tokenizer.save(folder)
    (folder / "meta.json").write_text(json.dumps({"special_tokens": tokenizer.special_tokens}))
    row = trial_row(client, run)
    seed_check = seed_checks.get(row.run_id, "not seed-checked")
    replay = as_started(f"tuner replay {row.run_id} --tracking-uri "
                        f"{shlex.quote(redact(client.tracking_uri))}")
    tags = {STUDY_TAG: study, TRIAL_TAG: row.trial_id, "tuner.val_loss": repr(row.val_loss),
            "tuner.seed_check": seed_check, "tuner.reproduce": replay,
            "tuner.checkpoint_sha256": run.data.tags.get("tuner.checkpoint_sha256", ""),
            DATASET_TAG: run.data.tags.get(DATASET_TAG, "")}
    version = registry.register(client, model, run, registry.Registration(
        checkpoint, folder, GENERATION, tags, _description(model, study, row, seed_check,
                                                           replay)))
    return Registered(model, version, study, row.trial_id, row.run_id, row.val_loss)


def _description(model: str, study: str, row: Any, seed_check: str, replay: str) -> str:
    """The version's description (Markdown): what it is, how it did, how to load and reproduce
    it."""
    from tuner.space.params import shown_value

    values = ", ".join(f"{n}={shown_value(n, v)}" for n, v in sorted(row.params.items()))
    uri = f"models:/{model}/{registry.VERSION}"
    settings = ", ".join(f"{k} {v}" for k, v in GENERATION.items())
    summary = (f"Best trial `{row.trial_id}` of study `{study}` (MLflow run `{row.run_id}`): "
               f"best val_loss {row.val_loss:.4f} (perplexity {row.perplexity:.2f}) after "
               f"{row.reached_at:,} of its {row.tokens:,} tokens; "
               f"{values or 'no searched values'}.")
    use = (f'Generate: `mlflow.pyfunc.load_model("{uri}").predict(["Once upon a time"])` (torch, '
           f"MLflow and the tuner package installed; generation settings, the model config: "
           f"{settings}).")
    return "\n\n".join([summary, f"Seed check: {seed_check}.", f"Reproduce it: `{replay}`", use])
