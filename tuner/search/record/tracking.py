"""The MLflow record of a study (docs/mlflow_layout.md), written from the driver by a Tune callback.

One parent run per study and one nested child run per trial. Runs are found again by their tags
(`tuner.study`, `tuner.trial_id`), so a resumed study reopens the same runs instead of adding
new ones.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from tuner.errors import UserError, reason
from tuner.search.faults.outcome import ended, outcome
from tuner.search.faults.stopping import STOP_CHECKPOINT
from tuner.search.faults.storage_faults import STORAGE_FAULT, storage_error
from tuner.search.record.run_notes import sample_text, study_note, trial_note
from tuner.search.trial.trainable import FORKS, TrainedTokens, trial_threads
from tuner.store import runs
from tuner.store.connect import open_client
from tuner.store.layout import (
    CHECKPOINTS,
    COMPLETED,
    CURVE_TABLE_TAG,
    DEVICE_TAG,
    DIVERGED,
    EXTENDED_TAG,
    FAILED,
    FAILED_IN_TAG,
    FINISHED,
    FORK_METRIC,
    METRICS,
    NODE_TAG,
    NOTE_TAG,
    PBT_TAG,
    RESUMED_COMMIT_TAG,
    ROLE_TAG,
    RUNNING,
    SEARCHED_TAG,
    SIZE_TAG,
    STATUS_TAG,
    STOP_REASON_TAG,
    STOPPED,
    STUDY_PREFIX,
    STUDY_TAG,
    SYMBOLS_TAG,
    TRANSFER_TAG,
    TRIAL_TAG,
    UNRANKED,
)
from tuner.store.redact import redact
from tuner.store.rows import trial_row
from tuner.store.transfer import read_transfer
from tuner.store.write import log_metrics, log_params_tags

RUN_STATUS = {COMPLETED: "FINISHED", STOPPED: "FINISHED", DIVERGED: "FINISHED", FAILED: "FAILED"}
MID_FOLDER = "mid_checkpoints"  # in STORAGE/NAME, one folder per trial


class TrackingLost(Exception):
    """The tracking store failed mid-study (an `mlflow server` after MLflow's own retries)."""


def _guarded(at_once: bool = False) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A recorder hook whose tracking failure ends the study as TrackingLost: raised `at_once`,
    else from the next `on_step_end`, because Tune catches a trial hook's error and would retry
    the trial. Once the store has failed, trial hooks do nothing (Tune's clean-up calls more)."""
    def decorate(hook: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(hook)
        def guarded(self: MlflowRecorder, *args: Any, **kwargs: Any) -> None:
            from mlflow.exceptions import MlflowException

            if self.lost is not None:
                if at_once:
                    raise self.lost
                return
            try:
                hook(self, *args, **kwargs)
            except (MlflowException, OSError) as err:
                self.lost = TrackingLost(redact(f"tracking store {self.study.tracking.uri} "
                                                f"failed: {reason(err)}"))
                self.lost.__cause__ = err
                if at_once:
                    raise self.lost from err
        return guarded
    return decorate


@dataclass
class _Child:
    """What the driver remembers of one trial's run."""

    run_id: str
    started: int = 0  # the run's start time (ms): a tie in val_loss goes to the earlier trial
    last_step: int = -1  # the furthest step logged
    latest: int = -1  # the step logged last: a PBT clone's can be below its furthest
    replay_to: int = -1  # logged before a restart from an older checkpoint: not logged again
    trained: int = 0  # tokens trained to the results logged (a PBT clone's own, not its donor's)
    logged: set[tuple[int, float]] = field(default_factory=set)  # (tokens, val_loss) pairs
    best: float = math.inf
    sample: tuple[int, int, str, str] | None = None  # tokens, step, prompt, generated text
    config: dict[str, Any] = field(default_factory=dict)
    described: bool = False  # params, tags and artifacts logged (a kill can cut that short)
    nodes: list[str] = field(default_factory=list)  # the Ray nodes it trained on, in order


class MlflowRecorder(tune.Callback):
    """Tune callback that writes the study's parent run and one child run per trial."""

    # The store's failure, once it failed. A class default: Tune.restore unpickles the recorder
    # saved when the study started, maybe by a version of tuner without this attribute.
    lost: TrackingLost | None = None
    flat: Any = None  # the study's FlatWatch (search.stop_when_flat), if it has one
    budget: Any = None  # the study's BudgetWatch (search.study_budget), if it has one

    def __init__(self, study: Any, data_dir: str, provenance: dict[str, Any], storage: str,
                 flat: Any = None, budget: Any = None, shown: str | None = None):
        """`storage`: the driver's folder of studies (an object store's: its working copy);
        `shown`: --storage as given, for the study's tag."""
        self.study, self.data_dir = study, data_dir
        self.provenance, self.storage, self.shown = provenance, storage, shown or storage
        self.flat, self.budget = flat, budget  # one pickle with the callbacks keeps them together
        self._client: Any = None

    # -- study (parent run) -------------------------------------------------------------------

    @_guarded(at_once=True)
    def setup(self, **info: Any) -> None:
        self._planned = info["total_num_samples"]  # the study's trials, an extension's included
        self._client = open_client(self.study.tracking.uri)
        self._exp = runs.experiment_id(self._client, self.study.tracking.experiment)
        parent = runs.find_parent(self._client, self.study.tracking.experiment, self.study.name)
        self._parent = parent.info.run_id if parent else self._create_parent()
        self._client.update_run(self._parent, status="RUNNING")
        if parent is not None:  # resumed, maybe by other code: trials started now say so
            from tuner.search.record.provenance import git_commit

            self.provenance = {**self.provenance, "git_commit": git_commit()}
            if self.provenance["git_commit"] != parent.data.tags.get("tuner.git_commit"):
                self._client.set_tag(self._parent, RESUMED_COMMIT_TAG,
                                     self.provenance["git_commit"])
            elif RESUMED_COMMIT_TAG in parent.data.tags:
                self._client.delete_tag(self._parent, RESUMED_COMMIT_TAG)
            self._note_extension(parent.data.tags.get(EXTENDED_TAG))
        self._children: dict[str, _Child] = {}
        self._finished: dict[str, str] = {}  # trial id -> status
        self._counter = TrainedTokens()
        self._best: tuple[float, int, str] = (math.inf, 0, "")
        self._best_tagged = parent.data.tags.get("tuner.best_trial_id", "") if parent else ""
        self._device_noted: set[str] = set()
        # MLflow shows a metric's value at its highest step: never log the study's below it
        self._study_step = max((m.step for m in self._client.get_metric_history(
            self._parent, f"{STUDY_PREFIX}tokens_trained")), default=0)
        for run in runs.child_runs(self._client, self._exp, self._parent):
            self._adopt(run)

    def _create_parent(self) -> str:
        study, prov = self.study, self.provenance
        tags = {STUDY_TAG: study.name, ROLE_TAG: "study", "tuner.git_commit": prov["git_commit"],
                "tuner.dataset_sha256": prov["dataset_sha256"],
                "tuner.storage": self.shown, "tuner.algorithm": study.search.searcher,
                "tuner.scheduler": study.search.scheduler,
                **{f"tuner.version.{k}": v for k, v in prov["versions"].items()}}
        if study.search.warm_start:
            tags["tuner.warm_start"] = study.search.warm_start
        if prov.get(CURVE_TABLE_TAG):
            tags[CURVE_TABLE_TAG] = prov[CURVE_TABLE_TAG]
        if study.transfer():
            tags[TRANSFER_TAG] = study.transfer()[0]
        run_id = self._client.create_run(self._exp, tags=tags, run_name=study.name).info.run_id
        self._client.log_text(run_id, redact(study.source_text), "space.yaml")
        self._client.log_dict(run_id, json.loads(redact(json.dumps(study.resolved()))),
                              "study.json")  # the tracking URI and search.storage, say
        self._client.log_dict(run_id, prov["dataset_meta"], "dataset_meta.json")
        self._client.log_dict(run_id, {"git_commit": prov["git_commit"], **prov["versions"]},
                              "versions.json")
        return run_id

    def _note_extension(self, extended: str | None) -> None:
        """Tag the parent with the study's samples at each extension ("10 → 14"): those it started
        with (its Tuner's study, restored), then each larger count it has run with since."""
        started = self.study.search.num_samples
        samples = self._planned * started // self.study.trial_count  # a transfer's: at each size
        chain = extended or str(started)
        if chain.rsplit(" → ", 1)[-1] != str(samples):
            self._client.set_tag(self._parent, EXTENDED_TAG, f"{chain} → {samples}")

    def _adopt(self, run: Any) -> None:
        """Take over a trial run written before a resume: where it got to and how it ended."""
        trial_id = run.data.tags.get(TRIAL_TAG)
        if not trial_id:
            return
        history = self._client.get_metric_history(run.info.run_id, "val_loss")
        latest = max(history, key=lambda m: (m.timestamp, m.step)).step if history else -1
        values = [(m.step, runs.finite_or_inf(m.value)) for m in history]
        child = _Child(run.info.run_id, run.info.start_time,
                       last_step=max((m.step for m in history), default=-1), latest=latest,
                       replay_to=latest, logged=set(values),
                       best=min((value for _, value in values), default=math.inf))
        child.described = SEARCHED_TAG in run.data.tags
        trained = self._client.get_metric_history(run.info.run_id, "tokens_trained")
        child.trained = max((int(m.value) for m in trained), default=max(child.last_step, 0))
        self._children[trial_id] = child
        if DEVICE_TAG in run.data.tags:
            self._device_noted.add(trial_id)
        if NODE_TAG in run.data.tags:
            child.nodes = run.data.tags[NODE_TAG].split(", ")
        status = run.data.tags.get(STATUS_TAG)
        if status in FINISHED and run.info.status != "RUNNING":  # else killed inside `_finish`
            self._finished[trial_id] = status
        self._note_best(trial_id, child.best)

    def _note_best(self, trial_id: str, value: float) -> bool:
        """Keep the lowest val_loss of a trial that has not diverged or failed; a tie goes to the
        earlier trial, as `tuner best` ranks."""
        if self._finished.get(trial_id) in UNRANKED:
            return False
        started = self._children[trial_id].started
        if (value, started) < self._best[:2]:
            self._best = (value, started, trial_id)
            return True
        return False

    def _log_study(self) -> None:
        counts = {s: sum(1 for v in self._finished.values() if v == s)
                  for s in (COMPLETED, STOPPED, DIVERGED, FAILED)}
        tokens = sum(child.trained for child in self._children.values())
        self._study_step = max(self._study_step, tokens)  # lower after a lost run is dropped
        values = {"trials_finished": len(self._finished), "tokens_trained": tokens,
                  **{f"trials_{s}": n for s, n in counts.items()}}
        if math.isfinite(self._best[0]):
            values["best_val_loss"] = self._best[0]
        elif self._best_tagged:  # the only best diverged, failed or was lost: none is left
            values["best_val_loss"] = math.nan
        log_metrics(self._client, self._parent, {STUDY_PREFIX + k: v for k, v in values.items()},
                          self._study_step)
        best = self._children.get(self._best[2])
        if best is not None and self._best[2] != self._best_tagged:
            log_params_tags(self._client, self._parent, {}, {"tuner.best_trial_id": self._best[2],
                                                     "tuner.best_run_id": best.run_id})
            self._best_tagged = self._best[2]
        elif best is None and self._best_tagged:  # the best was a lost run: no other has a loss
            for tag in ("tuner.best_trial_id", "tuner.best_run_id"):
                self._client.delete_tag(self._parent, tag)
            self._best_tagged = ""

    # -- trials (child runs) ------------------------------------------------------------------

    @_guarded()
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        child = self._children.get(trial.trial_id)
        if child is not None and trial.trial_id not in self._finished:
            self._client.update_run(child.run_id, status="RUNNING")
            log_params_tags(self._client, child.run_id, {},
                            self._status_tags(trial, child, RUNNING))
        self._run_of(trial)
        self._note_config(trial)

    def _run_of(self, trial: Any) -> _Child:
        """The trial's run, created RUNNING if it has none yet (a trial whose worker died as it
        started has none), and described if a kill cut that short before it trained."""
        child = self._children.get(trial.trial_id)
        if child is None:
            run = self._client.create_run(
                self._exp, run_name=f"{self.study.name}-{trial.trial_id}",
                tags={"mlflow.parentRunId": self._parent, STUDY_TAG: self.study.name,
                      ROLE_TAG: "trial", TRIAL_TAG: trial.trial_id, STATUS_TAG: RUNNING})
            child = self._children[trial.trial_id] = _Child(run.info.run_id, run.info.start_time)
        if not child.described:
            self._describe(child, trial)
        return child

    def _describe(self, child: _Child, trial: Any) -> None:
        """Log a trial run's params, tags and config artifacts; its `tuner.searched` tag last,
        which says the rest is there."""
        from model.config import EPOCHS, HPARAMS
        from tuner.space.params import ALL_DEFS, used_values

        searched = self.study.used(dict(trial.config))
        try:
            trial_config = self.study.trial_config(searched, Path(self.data_dir))
        except UserError:
            trial_config = None  # an invalid sample: the trial fails and says why
        params = {**(used_values(trial_config) if trial_config else {}), **searched}
        if trial_config:
            train_tokens = self.provenance["dataset_meta"]["train_tokens"]
            params[EPOCHS.name] = trial_config.epochs(train_tokens)
        defs = {**ALL_DEFS, **HPARAMS, EPOCHS.name: EPOCHS}
        symbols = {name: defs[name].symbol for name in sorted(params)}
        prov = self.provenance
        tags = {"tuner.seed": str(self.study.budget.seed),
                "tuner.threads": str(trial_threads(self.study)),
                "tuner.dataset_sha256": prov["dataset_sha256"],
                "tuner.git_commit": prov["git_commit"],
                SYMBOLS_TAG: json.dumps(symbols, ensure_ascii=False),
                NOTE_TAG: trial_note(searched, RUNNING, child.best)}  # until it ends
        sizes = self.study.transfer()
        if sizes and sizes[0] in searched:
            tags[SIZE_TAG] = str(searched[sizes[0]])
        log_params_tags(self._client, child.run_id, params, tags)
        self._client.log_dict(child.run_id, searched, "searched.json")
        if trial_config:
            self._client.log_dict(child.run_id, trial_config.to_dict(), "trial_config.json")
        self._client.set_tag(child.run_id, SEARCHED_TAG, ",".join(sorted(searched)))
        child.described, child.config = True, searched

    def _status_tags(self, trial: Any, child: _Child, status: str, detail: str = ""
                     ) -> dict[str, str]:
        """A trial run's `tuner.status` and the description that leads with it."""
        note = trial_note(self.study.used(dict(trial.config)), detail or status, child.best)
        return {STATUS_TAG: status, NOTE_TAG: note}

    def _note_config(self, trial: Any) -> None:
        """PBT changes a trial's hyperparameters as it goes: record each change as metrics."""
        child, searched = self._children[trial.trial_id], self.study.used(dict(trial.config))
        if child.config and child.config != searched:
            numeric = {f"hp.{k}": float(v) for k, v in searched.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            log_metrics(self._client, child.run_id, numeric, max(child.last_step, 0))
            self._client.set_tag(child.run_id, PBT_TAG, json.dumps(searched))
            child.replay_to = -1  # exploited: from here on it trains what it never did
        child.config = searched

    @_guarded()
    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self._children:
            self._note_config(trial)

    @_guarded()
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        child = self._children.get(trial.trial_id)
        tokens, trained = int(result.get("tokens", 0)), self._counter.add(trial.trial_id, result)
        if child is None or "error" in result:
            return
        for fork_tokens, fork_loss in result.get(FORKS, ()):  # a stop's checkpoint may bring some
            log_metrics(self._client, child.run_id, {FORK_METRIC: fork_loss}, fork_tokens)
        if STOP_CHECKPOINT in result or STORAGE_FAULT in result:  # no new evaluation
            child.trained += trained
            return
        if trial.trial_id in self._finished:
            return  # ended in MLflow before a kill that Tune's last snapshot did not see
        if "device" in result and trial.trial_id not in self._device_noted:
            self._client.set_tag(child.run_id, DEVICE_TAG, str(result["device"]))
            self._device_noted.add(trial.trial_id)
        if "node" in result and result["node"] not in child.nodes:
            child.nodes.append(str(result["node"]))
            self._client.set_tag(child.run_id, NODE_TAG, ", ".join(child.nodes))
        if result.get("sample") is not None:
            child.sample = (tokens, int(result.get("step", 0)),
                            str(result.get("sample_prompt", "")), str(result["sample"]))
        values = {k: float(result[k]) for k in METRICS if k in result}
        val_loss = values.get("val_loss", math.inf)
        # Logged before: a result inside the replay after a restart, or one identical to a
        # logged one (a trial restored where it was; a PBT exploit replayed after a restart).
        # A PBT clone that steps back trains anew: its new results are logged.
        if tokens <= child.replay_to or (tokens, val_loss) in child.logged:
            return
        child.logged.add((tokens, val_loss))
        child.latest = tokens
        child.last_step = furthest = max(child.last_step, tokens)
        child.trained += trained
        # Each at a step of its own, so that MLflow shows its latest value where a PBT clone
        # steps back: the count at itself, the best at the furthest step.
        own_steps = {"tokens_trained": child.trained}
        values["tokens_trained"] = child.trained
        if val_loss < child.best:
            child.best = values["best_val_loss"] = val_loss
            own_steps["best_val_loss"] = furthest
        log_metrics(self._client, child.run_id, values, tokens, own_steps)
        if self._note_best(trial.trial_id, val_loss):
            self._log_study()

    @_guarded()
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial)

    @_guarded()
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial)

    @_guarded()
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        child = self._run_of(trial)
        child.replay_to = child.latest  # it goes on from its last checkpoint
        self._client.set_tag(child.run_id, "tuner.retries", str(trial.run_metadata.num_failures))

    def _finish(self, trial: Any) -> None:
        # A trial MLflow already holds as finished keeps its record: Tune's snapshot before a
        # SIGKILL can lag the tracking store and restart it, but it must not end a second time.
        if trial.trial_id in self._finished:
            return
        child = self._run_of(trial)
        end = outcome(trial, self.study.search)
        result = trial.last_result or {}
        if child.sample is not None:
            self._client.log_text(child.run_id, sample_text(*child.sample), "sample.txt")
        if end.status == COMPLETED and self.study.tracking.log_checkpoints == "completed":
            self._log_checkpoint(trial, child)
        # The status last: a driver killed before `set_terminated` leaves a RUNNING run, which a
        # resume finishes again (`_adopt`), so no run stays RUNNING.
        tags = {**self._status_tags(trial, child, end.status, end.detail),
                "tuner.status_detail": end.detail[:5000]}
        if end.status == FAILED:
            tags["tuner.error"] = str(result.get("traceback") or end.detail)[-5000:]
            tags[FAILED_IN_TAG] = "process" if trial.status == "ERROR" else "trainer"
        log_params_tags(self._client, child.run_id, {}, tags)
        self._client.set_terminated(child.run_id, RUN_STATUS[end.status])
        self._finished[trial.trial_id] = end.status
        if end.status in UNRANKED and self._best[2] == trial.trial_id:
            self._note_best_again()
        self._log_study()

    def _note_best_again(self) -> None:
        """The study's best among the trials that still count (the last one diverged, say)."""
        self._best = (math.inf, 0, "")
        for trial_id, child in self._children.items():
            self._note_best(trial_id, child.best)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        """Keep (on the driver) the first checkpoint past half a trial: a replay can start there."""
        from model.checkpoint import CHECKPOINT_NAME

        result, mid = trial.last_result or {}, self.mid_checkpoint(trial)
        tokens, budget = result.get("tokens", 0), result.get("budget_tokens", 0)
        if mid.exists() or not budget <= 2 * tokens < 2 * budget:
            return
        with checkpoint.as_directory() as folder:
            if (Path(folder) / CHECKPOINT_NAME).is_file():
                mid.parent.mkdir(parents=True, exist_ok=True)
                partial = mid.with_name(f".{mid.name}.partial")  # a kill mid-copy leaves no `mid`
                try:
                    shutil.copyfile(Path(folder) / CHECKPOINT_NAME, partial)
                except OSError as err:
                    partial.unlink(missing_ok=True)
                    if storage_error(err) is None:
                        raise
                    return  # a full disk: the trials' own writes stop the study, and say why
                partial.replace(mid)

    def mid_checkpoint(self, trial: Any) -> Path:
        """Where the driver keeps the trial's mid-trial checkpoint: in the study's folder, or an
        object store's study in this driver's working copy (a resumed study's recorder comes
        from Tune's state, maybe saved by a driver on another machine)."""
        from model.checkpoint import CHECKPOINT_NAME
        from tuner.store.object_store import is_uri, working_copy_root

        shown = getattr(self, "shown", None)  # (a recorder saved before it had one)
        root = working_copy_root(shown) if shown and is_uri(shown) else Path(self.storage)
        return root / self.study.name / MID_FOLDER / trial.trial_id / CHECKPOINT_NAME

    def keeps_checkpoint(self, trial_id: str) -> bool:
        """Whether the trial's checkpoints may still be logged: its run has not ended in MLflow,
        or it is the study's best, whose checkpoint is logged when the study ends."""
        if self.lost is not None or trial_id not in self._finished:
            return True
        return trial_id == self._best[2] and self.study.tracking.log_checkpoints != "none"

    def _log_checkpoint(self, trial: Any, child: _Child) -> None:
        """Log the trial's final checkpoint, and its mid-trial one when kept, with their sha256."""
        from model.checkpoint import CHECKPOINT_NAME

        if trial.checkpoint is None:
            return
        with trial.checkpoint.as_directory() as folder:
            self._log_file(child, Path(folder) / CHECKPOINT_NAME, "final")
        self._log_file(child, self.mid_checkpoint(trial), "mid")

    def _log_file(self, child: _Child, path: Path, which: str) -> None:
        from model.checkpoint import file_sha256

        artifact, tag = CHECKPOINTS[which]
        if path.is_file():  # the tag last: it says the upload is done (a resume skips it then)
            sha256 = file_sha256(path)
            self._client.log_artifact(child.run_id, str(path), artifact)
            self._client.set_tag(child.run_id, tag, sha256)

    # -- the end ------------------------------------------------------------------------------

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.lost is not None:
            raise self.lost

    @_guarded(at_once=True)
    def on_experiment_end(self, trials: list, **info: Any) -> None:
        by_id = {t.trial_id: t for t in trials}
        lost = [trial_id for trial_id in self._children if trial_id not in by_id]
        for trial_id in lost:  # started before a kill, never saved in Tune's state
            child = self._children.pop(trial_id)
            self._finished.pop(trial_id, None)
            self._client.set_tag(child.run_id, STATUS_TAG, "lost")
            self._client.set_terminated(child.run_id, "KILLED")
            self._client.delete_run(child.run_id)
        if self._best[2] in lost:
            self._note_best_again()
        for trial in trials:  # ended while the store failed, before a resume: end its run now
            if ended(trial):
                self._finish(trial)
        reason = self.flat.reason if self.flat is not None else ""
        if reason:  # Tune ended the running trials with the study: they were stopped early
            for trial in trials:
                if trial.trial_id in self._children and trial.trial_id not in self._finished:
                    self._stop_with_study(trial, reason)
        best = by_id.get(self._best[2])
        finished = self._best[2] in self._finished  # an interrupted trial's would be mid-way
        if best is not None and finished and self.study.tracking.log_checkpoints != "none":
            run = self._client.get_run(self._children[self._best[2]].run_id)
            if "tuner.checkpoint_sha256" not in run.data.tags:
                self._log_checkpoint(best, self._children[self._best[2]])
        # Tune marks the trials of an interrupted study TERMINATED without completing them.
        unfinished = [t for t in trials if t.trial_id not in self._finished]
        for trial in unfinished:
            child = self._children.get(trial.trial_id)
            if child is not None:
                log_params_tags(self._client, child.run_id, {},
                                      self._status_tags(trial, child, "interrupted"))
                self._client.set_terminated(child.run_id, "KILLED")
        if self.budget is not None and not unfinished:  # interrupted: it goes on when resumed
            reason = reason or self.budget.reason
        self._log_study()
        self._note_study()
        if reason:
            self._client.set_tag(self._parent, STOP_REASON_TAG, reason)
        complete = bool(reason) or not unfinished and len(trials) >= self._planned
        self._client.set_terminated(self._parent, "FINISHED" if complete else "KILLED")

    def _stop_with_study(self, trial: Any, reason: str) -> None:
        """End the run of a trial that the study's flat stop ended as it ran: stopped."""
        child = self._children[trial.trial_id]
        detail = f"stopped with the study ({reason})"
        log_params_tags(self._client, child.run_id, {},
                        {**self._status_tags(trial, child, STOPPED, detail),
                         "tuner.status_detail": detail})
        self._client.set_terminated(child.run_id, RUN_STATUS[STOPPED])
        self._finished[trial.trial_id] = STOPPED

    def _note_study(self) -> None:
        """Describe the parent run: its best trial, by how much, on which values; a transfer
        study's, whether the best α held across the sizes."""
        trials = runs.ranked(runs.trial_runs(self._client, self._client.get_run(self._parent)))
        rows = [trial_row(self._client, run) for run in
                (trials if self.study.transfer() else trials[:2])]
        transfer = read_transfer(self.study.resolved(), rows)
        statuses = Counter(run.data.tags.get(STATUS_TAG, "?") for run in trials)
        self._client.set_tag(self._parent, NOTE_TAG, study_note(rows[:2], statuses, transfer))

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the study: keep the settings, not the live client."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")} | {"_client": None}
