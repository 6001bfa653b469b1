"""A study's runs in MLflow: finding its parent and trial runs, ranking them, and reading a
trial's config, metrics and checkpoints.

Every lookup that fails (unknown study or run, missing or altered artifact) raises UserError.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from model.config import ConfigError, TrainConfig, train_config_from_dict
from model.shell import as_started
from tuner.errors import UserError, reason
from tuner.store.layout import (
    CHECKPOINTS,
    PBT_TAG,
    ROLE_TAG,
    SCALE_TAG,
    SEARCHED_TAG,
    STATUS_TAG,
    STUDY_TAG,
    TRIAL_TAG,
    UNRANKED,
)

SQL_MAX = 1.7976931348623157e308  # SQL stores write ±inf as ±the largest float
RUN_ID = re.compile(r"[0-9a-f]{32}")  # use fullmatch
TRIAL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,250}")  # a trial id or run name; use fullmatch


def experiment_id(client: Any, name: str) -> str:
    """The id of experiment `name`, created when missing."""
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def find_parent(client: Any, experiment: str, study: str) -> Any | None:
    """The parent run of study `study` in `experiment`, or None; UserError when the experiment is
    deleted (MLflow keeps its name, and refuses new runs in it)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    if exp.lifecycle_stage == "deleted":
        raise UserError(f"MLflow experiment {experiment!r} at {client.tracking_uri} is deleted: "
                        f"restore it (`mlflow experiments restore --experiment-id "
                        f"{exp.experiment_id}`), remove it for good (`mlflow gc`), or record the "
                        "study in another (--name, or tracking.experiment in the study file)")
    runs = client.search_runs([exp.experiment_id], max_results=1, filter_string=(
        f"tags.`{STUDY_TAG}` = '{study}' AND tags.`{ROLE_TAG}` = 'study'"))
    return runs[0] if runs else None


def child_runs(client: Any, experiment_id_: str, parent_id: str) -> list[Any]:
    """Every run under a parent that is not deleted."""
    return client.search_runs([experiment_id_],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              max_results=50000)


def study_parents(client: Any, study: str) -> list[Any]:
    """The parent runs of studies named `study`, in every experiment of the store."""
    from tuner.space.schema import STUDY_NAME

    if not STUDY_NAME.fullmatch(study):
        return []
    return client.search_runs(experiment_ids(client), max_results=100, filter_string=(
        f"tags.`{STUDY_TAG}` = '{study}' AND tags.`{ROLE_TAG}` = 'study'"))


def study_parent(client: Any, study: str) -> Any:
    """The parent run of study `study`, looked up in every experiment of the store; UserError
    when there is none, or one in each of several experiments (which is meant is unknown)."""
    runs = study_parents(client, study)
    if len(runs) > 1:
        names = sorted(client.get_experiment(r.info.experiment_id).name for r in runs)
        raise UserError(f"{client.tracking_uri} holds a study {study!r} in each of the MLflow "
                        f"experiments {', '.join(map(repr, names))}: rename the runs' "
                        f"{STUDY_TAG} tag in all but one (or delete those runs)")
    if runs:
        return runs[0]
    known = sorted({r.data.tags[STUDY_TAG] for r in client.search_runs(
        experiment_ids(client), filter_string=f"tags.`{ROLE_TAG}` = 'study'", max_results=1000)})
    there = f"studies there: {', '.join(known)}" if known else "it holds no study"
    raise UserError(f"no study {study!r} in {client.tracking_uri} ({there})")


def scale_fit(client: Any, name: str) -> Any | None:
    """The latest `tuner scale` fit named `name`, or None (also where a study has that name)."""
    from tuner.space.schema import STUDY_NAME

    if not STUDY_NAME.fullmatch(name) or study_parents(client, name):
        return None
    found = client.search_runs(experiment_ids(client), max_results=1, filter_string=(
        f"tags.`{SCALE_TAG}` = '{name}' AND tags.`{ROLE_TAG}` = 'scale'"),
        order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def experiment_ids(client: Any) -> list[str]:
    """The ids of every active experiment of the store."""
    ids, token = [], None
    while True:
        page = client.search_experiments(page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            return ids


def study_experiments(client: Any, study: str | None) -> dict[str, str]:
    """The experiment id of `study`, or with None of every study in the store, by study name;
    UserError for an unknown study."""
    if study is not None:
        return {study: study_parent(client, study).info.experiment_id}
    parents = client.search_runs(experiment_ids(client), max_results=1000,
                                 filter_string=f"tags.`{ROLE_TAG}` = 'study'")
    return dict(sorted((r.data.tags[STUDY_TAG], r.info.experiment_id) for r in parents))


def trial_runs(client: Any, parent: Any) -> list[Any]:
    """The trial runs of a study (replays and other runs excluded)."""
    runs = child_runs(client, parent.info.experiment_id, parent.info.run_id)
    return [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]


def study_runs(client: Any, parent: Any, role: str) -> list[Any]:
    """The runs of `role` (a `tuner.role`) of the study whose parent run is `parent`, wherever
    they are nested."""
    study = parent.data.tags.get(STUDY_TAG, "")
    return client.search_runs([parent.info.experiment_id], max_results=50000, filter_string=(
        f"tags.`{ROLE_TAG}` = '{role}' AND tags.`{STUDY_TAG}` = '{study}'"))


def get_run(client: Any, run_id: str) -> Any:
    """The run with this id; UserError when the store has none."""
    from mlflow.exceptions import MlflowException

    if not RUN_ID.fullmatch(run_id):
        raise UserError(f"{run_id!r} is not an MLflow run id (32 hex digits)")
    try:
        run = client.get_run(run_id)
        experiment = client.get_experiment(run.info.experiment_id)
    except MlflowException:
        raise UserError(f"no run {run_id} in {client.tracking_uri}") from None
    if "deleted" in (run.info.lifecycle_stage, experiment.lifecycle_stage):
        gone = experiment.lifecycle_stage == "deleted"  # its runs read as deleted too
        what = f"experiment {experiment.name!r}" if gone else "run"
        raise UserError(f"run {run_id} is deleted in {client.tracking_uri} (its {what}); "
                        "`mlflow runs restore` or `mlflow experiments restore` brings it back")
    return run


def trial_run(client: Any, trial: str) -> Any:
    """The trial run `trial` names: its MLflow run id, its trial id or its run name; UserError
    for another kind of run (a study, a replay), or a name that fits none or several."""
    if RUN_ID.fullmatch(trial):
        run = get_run(client, trial)
        role = run.data.tags.get(ROLE_TAG)
        if role != "trial":
            raise UserError(f"run {trial} is not a trial of a study (its role is "
                            f"{role or 'unset'})")
        return run
    if not TRIAL_NAME.fullmatch(trial):  # it goes into a search filter
        raise UserError(f"{trial!r} is not a trial: give its MLflow run id (32 hex digits), its "
                        "trial id or its run name")
    found = {run.info.run_id: run for where in (f"tags.`{TRIAL_TAG}`", "attributes.run_name")
             for run in client.search_runs(experiment_ids(client), max_results=100, filter_string=(
                 f"{where} = '{trial}' AND tags.`{ROLE_TAG}` = 'trial'"))}
    if len(found) > 1:
        raise UserError(f"{trial!r} names several trial runs in {client.tracking_uri} (run ids "
                        f"{', '.join(sorted(found))}): give the run id")
    if not found:
        raise UserError(f"no trial run with the id, trial id or run name {trial!r} in "
                        f"{client.tracking_uri}")
    return next(iter(found.values()))


def finite_or_inf(value: float) -> float:
    """A stored metric value with ±inf restored."""
    return math.copysign(math.inf, value) if abs(value) >= SQL_MAX else value


def metric(run: Any, key: str) -> float:
    """The latest value of a run's metric (inf when it never logged one)."""
    return finite_or_inf(run.data.metrics.get(key, math.inf))


def metric_points(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    """Every logged (step, value) of a metric, by step; step is tokens seen for a trial."""
    history = client.get_metric_history(run_id, key)
    return sorted((int(m.step), finite_or_inf(m.value)) for m in history)


def ranked(runs: list[Any]) -> list[Any]:
    """Trial runs best first, by their best val_loss: diverged and failed trials after the rest,
    and runs that never evaluated last."""
    return sorted(runs, key=lambda r: (not math.isfinite(metric(r, "best_val_loss")),
                                       not counts_as_best(r), metric(r, "best_val_loss"),
                                       r.info.start_time))


def counts_as_best(run: Any) -> bool:
    """Whether a trial run can be the study's best: it evaluated and neither diverged nor failed
    (a loss it reached before diverging does not make its config a good one)."""
    return (math.isfinite(metric(run, "best_val_loss"))
            and run.data.tags.get(STATUS_TAG) not in UNRANKED)


def best_trial(client: Any, study: str) -> Any:
    """The study's trial run with the lowest val_loss, of those that can be the best."""
    return best_of(trial_runs(client, study_parent(client, study)), study)


def best_of(trials: list[Any], study: str) -> Any:
    """The best of study `study`'s trial runs `trials`; UserError when none can be the best."""
    runs = ranked(trials)
    if not runs or not counts_as_best(runs[0]):
        running = sum(run.info.status == "RUNNING" for run in runs)
        are = "is" if running == 1 else "are"
        wait = (f"; {running} of its trials {are} marked running: if the study is still going, "
                "ask again after their first evaluation; if its driver was stopped, continue it "
                f"with {as_started(f'tuner search --resume --name {study}')}" if running else "")
        raise UserError(f"study {study!r} has no trial with a finite val_loss that neither "
                        f"diverged nor failed{wait}")
    return runs[0]


def json_artifact(client: Any, run: Any, path: str, dst: Path) -> Any:
    """A JSON artifact of a run, downloaded to `dst` and parsed."""
    local = download(client, run, path, dst)
    try:
        return json.loads(local.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"artifact {path} of run {run.info.run_id} is not valid JSON ({err})"
                        ) from None


def recorded_study(client: Any, parent: Any, dst: Path) -> dict[str, Any]:
    """The resolved study its parent run recorded (study.json); UserError when it is damaged."""
    data = json_artifact(client, parent, "study.json", dst)
    search = data.get("search") if isinstance(data, dict) else None
    if not (isinstance(search, dict) and all(isinstance(search.get(key), str) for key in
                                             ("scheduler", "metric", "mode"))
            and isinstance(data.get("resources", {}), dict)):
        raise UserError(f"artifact study.json of run {parent.info.run_id} is not a resolved study "
                        "(its search section names no scheduler, metric and mode)")
    return data


def download(client: Any, run: Any, path: str, dst: Path) -> Path:
    """Download one artifact of a run into `dst`; UserError when it is missing. Read from the
    run's artifact location as the run object holds it: MlflowClient.download_artifacts would
    look the run up again, ten times the time of a small file (a report reads one a trial)."""
    import mlflow.artifacts

    try:
        return Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{run.info.artifact_uri.rstrip('/')}/{path}", dst_path=str(dst),
            tracking_uri=client.tracking_uri))
    except Exception as err:  # noqa: BLE001 - missing files surface as several exception types
        raise UserError(f"run {run.info.run_id} has no readable artifact {path} "
                        f"({reason(err)})") from None


def trial_config(client: Any, run: Any, dst: Path) -> TrainConfig:
    """The trainer config the trial ran with (its trial_config.json artifact)."""
    data = json_artifact(client, run, "trial_config.json", dst)
    try:
        if not isinstance(data, dict) or "data" not in data:
            raise ConfigError("data", "not given")  # "." otherwise: the folder it is run in
        config = train_config_from_dict(data)
        config.validate()
    except (ConfigError, TypeError) as err:
        raise UserError(f"trial_config.json of run {run.info.run_id} is not a trainer config "
                        f"({err})") from None
    return config


def pbt_values(run: Any) -> dict[str, Any] | None:
    """The searched values a PBT trial ended with (its params hold those it started with); None
    for a trial whose values never changed."""
    changed = run.data.tags.get(PBT_TAG)
    if changed is None:
        return None
    try:
        values = json.loads(changed)
    except json.JSONDecodeError:
        values = None
    if not isinstance(values, dict):
        raise UserError(f"run {run.info.run_id}: its {PBT_TAG} tag is not a JSON object")
    return values


def searched_values(run: Any) -> tuple[dict[str, str], bool]:
    """The values the searcher chose for a trial, by study-file name as logged, and whether PBT
    changed them (then they are those it ended with)."""
    final = pbt_values(run) or {}
    names = [n for n in run.data.tags.get(SEARCHED_TAG, "").split(",") if n]
    return ({n: str(final[n]) if n in final else run.data.params.get(n, "–") for n in names},
            bool(final))


def reproducible_config(client: Any, run: Any, dst: Path, purpose: str) -> TrainConfig:
    """The trial's config, for `purpose` ("replayed", "exported"): UserError for a PBT trial,
    whose hyperparameters changed while it ran, so that no one config produced its results."""
    if pbt_values(run) is not None:
        raise UserError(f"trial run {run.info.run_id} had its hyperparameters changed by PBT while "
                        f"it ran: it is not one config and cannot be {purpose}")
    return trial_config(client, run, dst)


def checkpoint_file(client: Any, run: Any, which: str, dst: Path) -> Path:
    """A trial's checkpoint artifact ("final" or "mid"), checked against the sha256 recorded when
    it was logged: a missing, truncated or replaced file raises UserError."""
    from model.checkpoint import CHECKPOINT_NAME, file_sha256
    folder, tag = CHECKPOINTS[which]
    run_id = run.info.run_id
    expected = run.data.tags.get(tag)
    if expected is None:
        what, why = (("mid-trial checkpoint", ("a trial keeps one once past half its budget, "
                                               "logged with its final checkpoint "
                                               "(tracking.log_checkpoints: completed trials' "
                                               "and the best trial's)"))
                     if which == "mid" else
                     ("checkpoint", ("a study keeps its completed trials' and its best "
                                     "trial's (tracking.log_checkpoints), not a stopped or "
                                     "failed trial's")))
        raise UserError(f"run {run_id} has no {what} recorded (no {tag} tag): {why}")
    path = download(client, run, f"{folder}/{CHECKPOINT_NAME}", dst)
    actual = file_sha256(path)
    if actual != expected:
        raise UserError(f"checkpoint {folder}/{CHECKPOINT_NAME} of run {run_id} is truncated or "
                        f"altered: its sha256 is {actual[:12]}…, {expected[:12]}… was recorded")
    return path
