"""Seed-checked winners: a study's best completed trials trained again with further seeds, each
trial's mean ± sd of final val_loss, and whether the winner's lead exceeds the seed noise.

A confirmation trains the trial's recorded config with only its seed changed, in this process,
one after another (as `tuner replay` does), and is recorded as a run nested under that trial,
with its params and metrics (tuner.role "confirmation", never a trial). A trial and seed already
confirmed is not trained again, and one seed check of a study runs at a time on a machine: a
second waits for the first, then trains the seeds it lacks, and ends as KILLED the runs of one
that died on this machine (SIGKILLed: nothing ended them). The verdict: winners.verdict.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.folder_lock import folder_lock
from tuner.search.winners.verdict import Confirmation, Seeded, compare
from tuner.store import runs
from tuner.store.layout import (
    COMPLETED,
    CONFIRM_HOST_TAG,
    CONFIRMATION,
    CONFIRMS_RUN_TAG,
    CONFIRMS_TAG,
    NOTE_TAG,
    ROLE_TAG,
    SEED_CHECK_JSON,
    STATUS_TAG,
    STUDY_TAG,
    TRIAL_TAG,
    VERDICT_TAG,
)
from tuner.store.uri import absolute_uri


def candidates(client: Any, parent: Any, top: int) -> tuple[list[Any], list[str]]:
    """The `top` best completed trial runs of the study (those that trained their full budget,
    so that their final val_loss compares), and a note where there are fewer."""
    completed = [r for r in runs.ranked(runs.trial_runs(client, parent))
                 if r.data.tags.get(STATUS_TAG) == COMPLETED and runs.counts_as_best(r)]
    study = parent.data.tags.get(STUDY_TAG, "?")
    if not completed:
        raise UserError(f"study {study!r} has no completed trial to confirm (each was stopped "
                        "early, diverged or failed)")
    notes = [] if len(completed) >= top else [
        (f"study {study!r} has {len(completed)} completed trials, fewer than the {top} asked: "
         f"confirming those {len(completed)}")]
    return completed[:top], notes


def confirm(client: Any, study: str, top: int, seeds: int, workdir: Path,
            progress: Callable[[str], None] = lambda line: None) -> Confirmation:
    """Train the study's `top` best completed trials with `seeds` further seeds each (those not
    confirmed already, once another seed check of it here has ended), compare them with any other
    trial it seed-checked before, and record the verdict on its parent run (a tag, and the whole
    test as seed_check.json)."""
    parent = runs.study_parent(client, study)
    with held(client, parent, progress):
        chosen, notes = candidates(client, parent, top)
        for run in chosen:
            seed_check(client, parent, run, seeds, workdir, progress)
        result = recorded(client, parent, notes)
        assert result is not None  # the chosen trials were just seed-checked
        asked = {run.info.run_id for run in chosen}
        if more := [t.trial_id for t in result.trials if t.run_id not in asked]:
            result.notes.append(f"also compared, seed-checked before: {', '.join(more)}")
        if len(result.trials) < 2:
            result.notes.append("one trial alone has no rival: its seed sd is measured, nothing "
                                "is compared")
        client.set_tag(parent.info.run_id, VERDICT_TAG,
                       f"{result.winner.trial_id} {result.verdict}")
        client.log_dict(parent.info.run_id, result.record(), SEED_CHECK_JSON)
    return result


@contextlib.contextmanager
def held(client: Any, parent: Any, progress: Callable[[str], None]) -> Iterator[None]:
    """Hold the one seed check of `parent`'s study in this store on this machine (waiting for
    another, said through `progress`), and end as KILLED the confirmation runs this machine left
    RUNNING: with the lock free, the process that trained them died (a SIGKILL ends no run)."""
    study = parent.data.tags.get(STUDY_TAG, "")

    def on_wait() -> None:
        progress(f"study {study!r} is being seed-checked by another process: waiting for it to "
                 "end, then training the seeds it did not")

    with folder_lock(_lock_folder(client.tracking_uri, study), on_wait):
        here = socket.gethostname()
        for run in runs.study_runs(client, parent, CONFIRMATION):
            if run.info.status != "RUNNING" or run.data.tags.get(CONFIRM_HOST_TAG) != here:
                continue
            client.set_terminated(run.info.run_id, "KILLED")
            progress(f"ended seed run {run.info.run_name} as KILLED: the seed check that trained "
                     "it died; its seed trains again")
        yield


def _lock_folder(tracking_uri: str, study: str) -> Path:
    """The folder whose lock one seed check of `study` in that store holds, on this machine
    (named by a hash: the URI may hold a password)."""
    key = f"{absolute_uri(tracking_uri)}\n{study}".encode()
    return Path(tempfile.gettempdir()) / f"tuner-seed-check-{hashlib.sha256(key).hexdigest()[:16]}"


def further_seeds(run: Any, seeds: int) -> list[int]:
    """The seeds a trial is confirmed with: its own + 1 … + `seeds`."""
    own = int(run.data.tags.get("tuner.seed", 0))
    return [own + i for i in range(1, seeds + 1)]


def seed_check(client: Any, parent: Any, run: Any, seeds: int, workdir: Path,
               progress: Callable[[str], None] = lambda line: None) -> Seeded:
    """Train trial run `run` with each of its further seeds not recorded yet; its Seeded."""
    done = {int(c.data.tags["tuner.seed"]) for c in confirmations(client, parent)
            if c.data.tags.get(CONFIRMS_RUN_TAG) == run.info.run_id}
    config = None
    for seed in further_seeds(run, seeds):
        if seed in done:
            continue
        if config is None:
            config = runs.reproducible_config(client, run, workdir, "confirmed")
        progress(f"confirming trial {run.data.tags.get(TRIAL_TAG, '?')} with seed {seed} …")
        _train(client, parent, run, config, seed)
    return seeded(client, parent, [run])[0]


def _train(client: Any, parent: Any, run: Any, config: Any, seed: int) -> None:
    """Train the trial's config with `seed` as a confirmation run nested under the trial: its
    params but the seed, and its metrics (best_val_loss too), so that MLflow's runs table ranks
    it among the trials."""
    import dataclasses

    from model.train import device_label, resolve_device
    from tuner.search.record.provenance import git_commit
    from tuner.search.winners.retrain import train_logged
    from tuner.store.write import log_params_tags

    config = dataclasses.replace(config, seed=seed)
    tags = run.data.tags
    trial = tags.get(TRIAL_TAG, "")
    name = f"{run.info.run_name}-seed{seed}"
    run_id = client.create_run(parent.info.experiment_id, run_name=name, tags={
        "mlflow.parentRunId": run.info.run_id, ROLE_TAG: CONFIRMATION,
        CONFIRMS_TAG: trial, CONFIRMS_RUN_TAG: run.info.run_id,
        STUDY_TAG: tags.get(STUDY_TAG, ""), "tuner.seed": str(seed),
        "tuner.dataset_sha256": tags.get("tuner.dataset_sha256", ""),
        "tuner.git_commit": git_commit(), CONFIRM_HOST_TAG: socket.gethostname(),
        "tuner.device": device_label(resolve_device(config.device))}).info.run_id
    params = {**run.data.params, **({"seed": seed} if "seed" in run.data.params else {})}
    log_params_tags(client, run_id, params, {NOTE_TAG: (
        f"Seed check of trial {trial} (run {run.info.run_id}): its config trained again with "
        f"seed {seed}.")})
    client.log_dict(run_id, config.to_dict(), "trial_config.json")
    threads = int(tags["tuner.threads"]) if "tuner.threads" in tags else None
    train_logged(client, run_id, config, threads=threads, log_best=True)
    client.set_terminated(run_id, "FINISHED")


def confirmations(client: Any, parent: Any) -> list[Any]:
    """The finished confirmation runs of a study: nested under their trials (under the study's
    parent, as recorded before)."""
    return [r for r in runs.study_runs(client, parent, CONFIRMATION)
            if r.info.status == "FINISHED"]


def seeded(client: Any, parent: Any, trials: list[Any]) -> list[Seeded]:
    """Each trial run's final val_loss at its own seed and at each seed it was confirmed with."""
    found = confirmations(client, parent)
    out = []
    for run in trials:
        losses = {int(run.data.tags.get("tuner.seed", 0)): runs.metric(run, "val_loss")}
        losses.update((int(c.data.tags["tuner.seed"]), runs.metric(c, "val_loss")) for c in found
                      if c.data.tags.get(CONFIRMS_RUN_TAG) == run.info.run_id)
        out.append(Seeded(run.data.tags.get(TRIAL_TAG, "?"), run.info.run_id, losses))
    return out


def recorded(client: Any, parent: Any, notes: list[str] | None = None) -> Confirmation | None:
    """Every trial the study has seed-checked, compared (None when it has none): the verdict
    that `tuner best`, `tuner report`, the API and the parent's tag all give."""
    confirmed = {c.data.tags.get(CONFIRMS_RUN_TAG) for c in confirmations(client, parent)}
    trials = [r for r in runs.trial_runs(client, parent) if r.info.run_id in confirmed]
    return compare(seeded(client, parent, trials), notes) if trials else None
