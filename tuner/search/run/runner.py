"""Run (or resume) a study on Ray Tune: Ray start-up, the Tuner, and the summary MLflow holds after.

Call `tuner.search.environment.configure(local=...)` before anything imports Ray.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.output import count
from tuner.search.run.console import Summary
from tuner.search.run.local_ray import start_local_ray
from tuner.search.state import state
from tuner.store.layout import FINISHED
from tuner.store.object_store import Storage
from tuner.store.redact import redact


def start_ray(address: str | None) -> None:
    """Connect to the cluster at `address`, or start a local Ray using every core."""
    import ray

    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR,
                              "include_dashboard": False}
    if address:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as err:
            hint = ("; is RAY_AUTH_TOKEN (or ~/.ray/auth_token) the cluster's token?"
                    if os.environ.get("RAY_AUTH_MODE") == "token" else "")
            raise UserError(f"--address {address}: {err}{hint}") from None
    else:
        # What Ray's processes write under /tmp/ray, private to the user: its runtime-env agent
        # logs the environment Tune forwards (AWS keys among them), and Tune stages the study's
        # state there (its searcher holds the tracking URI). Ray opens its own folders to all.
        umask = os.umask(0o077)  # the processes started here, and the workers they start (a
        try:  # trial puts the user's back for the files it writes: see run_trial)
            start_local_ray(**kwargs)
        finally:
            os.umask(umask)
        from ray.train.constants import _get_ray_train_session_dir

        staging = Path(_get_ray_train_session_dir())
        staging.mkdir(exist_ok=True)
        staging.chmod(0o700)
    logging.getLogger("ray").setLevel(logging.ERROR)


def current_umask() -> int:
    """This process's umask (read by setting it, so set back at once)."""
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def capacity_shortage(resources: Any, address: str | None) -> str | None:
    """Why no node of the running Ray can hold one trial (None when one can): Tune would wait."""
    import ray

    return shortage(resources, [node["Resources"] for node in ray.nodes() if node["Alive"]],
                    address)


def shortage(resources: Any, nodes: list[dict[str, float]], address: str | None) -> str | None:
    """Why none of `nodes` (the CPUs and GPUs of each: a cluster's at `address`, else the local
    Ray's) can hold one trial; None when one can."""
    need = {"CPU": resources.cpus_per_trial, "GPU": resources.gpus_per_trial}
    if any(all(node.get(kind, 0.0) >= amount for kind, amount in need.items()) for node in nodes):
        return None
    most = {kind: max((node.get(kind, 0.0) for node in nodes), default=0.0) for kind in need}
    field = ("gpus_per_trial" if most["GPU"] < need["GPU"] else
             "cpus_per_trial" if most["CPU"] < need["CPU"] else "cpus_per_trial and gpus_per_trial")
    have = f"{count(most['CPU'], 'CPU')} and {count(most['GPU'], 'GPU')}"
    where = (f"no node of the cluster at {address} has both (at most {have} on a node)" if address
             else f"Ray counts {have} on this machine")
    hint = ("; to train on the CPU, set device: cpu and gpus_per_trial: 0"
            if most["GPU"] == 0 < need["GPU"] else "")
    return (f"resources.{field}: a trial needs {count(need['CPU'], 'CPU')} and "
            f"{count(need['GPU'], 'GPU')}, but {where}{hint}")


def tune_config(study: Any, warm_trials: list[Any] | None = None, budget: Any = None) -> Any:
    """Searcher, scheduler and concurrency of a new study (built before Ray starts: fail early);
    the searcher starts from `warm_trials` when given, and draws no more trials once `budget` (a
    BudgetWatch) is spent."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tuner.search.searchers.algorithms import build_scheduler, build_searcher
    from tuner.search.trial.trainable import trial_folder

    search = study.search
    if search.scheduler == "pbt":  # Tune's max_concurrent_trials is lost on this generator
        searcher = BasicVariantGenerator(max_concurrent=search.max_concurrent or 0,
                                         random_state=search.seed)
    else:
        searcher = build_searcher(study, warm_trials)
        if budget is not None:
            from tuner.search.searchers.study_budget import BudgetSearcher

            searcher = BudgetSearcher(searcher, budget)
    return tune.TuneConfig(  # metric and mode live in the scheduler and the searcher
        num_samples=study.trial_count, max_concurrent_trials=search.max_concurrent,
        search_alg=searcher, scheduler=build_scheduler(study),
        reuse_actors=True, trial_dirname_creator=lambda trial: trial_folder(trial.trial_id))


def build_tuner(study: Any, data_dir: Path, storage: Storage, config: Any | None,
                provenance: dict[str, Any], scratch: str, replay: Any = None,
                budget: Any = None, staged_dataset: str | None = None) -> Any:
    """A new Tuner for the study, or (config None) the one restored from its folder in `storage`
    (written through Tune's own storage layer, an object store's too), its
    trials' working files in the folder `scratch` of each node (`tuner.search.trial.scratch`): Tune
    restores its searcher, trials and callbacks (ours keep only their settings), and the
    scheduler as it started (Tune saves none of its state; StateBackup puts back ASHA's and the
    median rule's). With `replay` (a CurveReplay) its table answers the trials; with `budget` (the
    BudgetWatch its searcher was given) its trials stop once the study budget is spent; with
    `staged_dataset` (tuner.dataset_stage's URI) they fetch the dataset, not read `data_dir`."""
    from ray import tune
    from ray.tune.stopper import CombinedStopper

    from tuner.search.faults.stopping import StopRelay
    from tuner.search.faults.storage_faults import StorageGuard
    from tuner.search.record.tracking import MlflowRecorder
    from tuner.search.run.console import LiveView
    from tuner.search.searchers.algorithms import stopping_points, time_unit, tune_space
    from tuner.search.searchers.flat_stop import FlatStopper, FlatWatch
    from tuner.search.searchers.study_budget import BudgetStopper
    from tuner.search.state.recovery import CheckpointRepair, StateBackup
    from tuner.search.trial.trainable import checkpoint_interval, run_trial, trial_threads

    res = study.resources
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, study=study, data_dir=str(data_dir),
                             threads=trial_threads(study), time_unit=time_unit(study),
                             stopping_points=stopping_points(study),
                             checkpoint_every_s=checkpoint_interval(study), umask=current_umask(),
                             stop_flag=stop_flag(storage, study.name), scratch=scratch,
                             replay=replay, staged_dataset=staged_dataset),
        {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
    if config is None:
        # A trial resumed from its checkpoint reports again an evaluation its Optuna trial had
        # before the stop; Optuna keeps the first and warns, a traceback-like line in the view.
        warnings.filterwarnings("ignore", message="The reported value is ignored because this")
        return tune.Tuner.restore(storage.study_path(study.name), trainable,
                                  resume_unfinished=True, storage_filesystem=storage.filesystem)
    pbt = study.search.scheduler == "pbt"
    flat = FlatWatch(study) if study.search.stop_when_flat else None
    recorder = MlflowRecorder(study, str(data_dir), provenance, str(storage.local), flat, budget,
                              storage.shown())
    # A trial resumes from the checkpoint Tune's last save names: the latest or the one before
    # (StateBackup deletes them once the trial ended). PBT clones others' and keeps them all: its
    # save of a function trainable registers the latest checkpoint again, and pruning one of the
    # two deletes the files of the other, which it may still clone from.
    callbacks = [*([budget] if budget else []), CheckpointRepair(),
                 StateBackup(config.scheduler, None if pbt else recorder),
                 StorageGuard(), recorder, *([flat] if flat else []),  # after the recorder
                 LiveView(study, budget), StopRelay()]  # the relay last: a held stop finds the
    # study set up
    stoppers = [*([FlatStopper(flat)] if flat else []), *([BudgetStopper(budget)] if budget else [])]
    run_config = tune.RunConfig(
        name=study.name, storage_path=storage.tune_path(), storage_filesystem=storage.filesystem,
        callbacks=callbacks, verbose=0,
        stop=CombinedStopper(*stoppers) if len(stoppers) > 1 else next(iter(stoppers), None),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None if pbt else 2),
        failure_config=tune.FailureConfig(max_failures=study.search.max_failures))
    return tune.Tuner(trainable, param_space=tune_space(study) if pbt else {},
                      tune_config=config, run_config=run_config)


def run_study(study: Any, data_dir: Path, storage: Storage, *, address: str | None,
              restore: bool, provenance: dict[str, Any], overrides: dict[str, Any] | None,
              warn: Callable[[str], None], stuck: Callable[[str], None],
              warm_trials: list[Any] | None = None, replay: Any = None,
              staged_dataset: str | None = None) -> Summary:
    """Run the study to its end (or an interrupt) and summarise what MLflow recorded.

    `restore` continues the study from Tune's state, creating trials up to its trial count (more
    than it started with when extended); otherwise it starts (again), its searcher seeded by
    `warm_trials` (Optuna trials of an earlier study). `overrides` (the command line's, or an
    extension's) are saved with the study, for `--resume` to rebuild it; None when they are saved
    already.
    A local Ray too small for one trial is a UserError; a cluster's shortage is only `warn`ed.
    With `replay` (a CurveReplay) the trials are answered from its table, not trained; with
    `staged_dataset` they train on that staged copy of the dataset (tuner.dataset_stage).
    A lost Ray node stops the study (NodeLost), or where it cannot, `stuck` ends it
    (tuner.search.faults.node_watch).
    """
    import numpy as np

    random.seed(study.search.seed)  # PBT's perturbations and ASHA's bracket draws
    np.random.seed(study.search.seed)
    from tuner.search.faults import storage_faults
    from tuner.search.faults.node_watch import stop_on_node_loss
    from tuner.search.faults.stopping import abort_if_stopped, stop_handlers_kept, stops_held
    from tuner.search.run.console import stop_live_views
    from tuner.search.searchers.study_budget import BudgetWatch
    from tuner.search.state import lease, working_copy
    from tuner.search.state.extension import set_trial_limit
    from tuner.search.state.tune_state import keep, restore_whole_state
    from tuner.search.trial import scratch

    # a resumed study's watch comes back with Tune's state
    budget = BudgetWatch(study) if study.search.study_budget and not restore else None
    config = None if restore else tune_config(study, warm_trials, budget)
    trial_files: str | None = None  # the name of the trials' working folder on each node
    folder = storage.local / study.name  # the driver's own files (an object store's: a copy)
    with stops_held(stop_flag(storage, study.name), study.search.stop_grace_s):
        with stop_handlers_kept():
            start_ray(address)
        import ray

        from tuner.search.faults.worker_deaths import as_actor_deaths

        as_actor_deaths(warn)

        try:
            shortage = capacity_shortage(study.resources, address)
            if shortage and not address:
                raise UserError(shortage)
            abort_if_stopped()
            if shortage:
                warn(f"{shortage}; trials wait until such a node joins")
            trial_files = scratch.new_name()
            with state.driven(folder), lease.held(storage, study.name):
                if restore and restore_whole_state(folder):
                    warn(f"Tune's state in {storage.study_path(study.name)} was part-written "
                         "(its driver was killed while Tune copied it): the study goes on from "
                         "the last whole copy")
                if overrides is not None:
                    state.save(folder, study, overrides)
                if restore and set_trial_limit(folder, study.trial_count):
                    keep(folder, folder)  # extended: the copy too
                working_copy.push(storage, study.name)  # saved and checked: Tune reads it now
                with storage_faults.as_storage_full(folder), \
                        stop_on_node_loss(address, stuck):
                    _fit(build_tuner(study, data_dir, storage, config, provenance, trial_files,
                                     replay, budget, staged_dataset))
                    # Tune's last save is whole in the folder now; a resume of a study with
                    # nothing left to run takes no step, so StateBackup kept no copy of that save
                    working_copy.pull(storage, study.name, whole=False)
                    keep(folder, folder)
                    working_copy.push(storage, study.name)
        finally:
            stop_live_views()
            try:
                if trial_files is not None:
                    scratch.remove_everywhere(trial_files, cluster=address is not None)
            finally:
                ray.shutdown()
    return summarise(study)


def stop_flag(storage: Storage, name: str) -> Any:
    """What tells the trials of study `name` that it is stopping: a file in its folder, or
    where the trials share no disk with the driver, a Ray actor (`RayFlag`) every node reaches."""
    from tuner.search.faults.stopping import STOP_FLAG, RayFlag

    return RayFlag(f"tuner-stop-{name}") if storage.remote else storage.local / name / STOP_FLAG


def _fit(tuner: Any) -> None:
    """Tuner.fit, raising the recorder's TrackingLost itself rather than as Tune's TuneError."""
    from tuner.search.record.tracking import TrackingLost

    try:
        tuner.fit()
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, TrackingLost):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None


def summarise(study: Any) -> Summary:
    """The study's outcome as MLflow records it: counts by status and the best trial; saves the
    view of its experiment's runs that the summary's link to MLflow's UI opens."""
    from tuner.search.record.tracking import TrackingLost
    from tuner.store.connect import connect
    from tuner.store.layout import STATUS_TAG, STOP_REASON_TAG
    from tuner.store.runs import counts_as_best, find_parent, ranked, searched_values, trial_runs
    from tuner.store.view import save_view

    try:
        client = connect(study.tracking.uri)
    except UserError as err:  # it answered as the study began: it failed since (exit 1, not 2)
        raise TrackingLost(redact(str(err))) from None
    parent = find_parent(client, study.tracking.experiment, study.name)
    runs = trial_runs(client, parent)  # not its confirmations
    counts = {s: sum(1 for r in runs if r.data.tags.get(STATUS_TAG) == s) for s in FINISHED}
    summary = Summary(study.name, parent.info.run_id, counts,
                      tracking_uri=redact(study.tracking.uri),
                      interrupted=parent.info.status != "FINISHED",
                      experiment_id=parent.info.experiment_id,
                      stop_reason=parent.data.tags.get(STOP_REASON_TAG, ""))
    save_view(client, parent.info.experiment_id)
    best = next(iter(ranked(runs)), None)  # ties: the earliest, as the live view and `tuner best`
    if best is not None and counts_as_best(best):
        summary.best_trial = best.data.tags.get("tuner.trial_id")
        summary.best_run_id = best.info.run_id
        summary.best_val_loss = best.data.metrics["best_val_loss"]
        summary.best_params, summary.best_by_pbt = searched_values(best)
    return summary
