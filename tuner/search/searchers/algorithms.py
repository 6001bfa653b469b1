"""The study's search algorithm and trial scheduler, built from its `search` section.

Searchers are Optuna samplers behind Ray's OptunaSearch with the schema's define-by-run space;
PBT cannot share a searcher with Tune, so its population is drawn by Tune from the same space.
Schedulers measure time in tokens seen, so trials of different batch sizes compare fairly
(HyperBand counts units of about a grace period: its brackets assume a few time units).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import warnings
from typing import Any

from tuner.search.trial.trainable import HYPERBAND_TIME, TIME_ATTR


def optuna_sampler(algorithm: str, seed: int, startup_trials: int | None = None) -> Any:
    """The seeded Optuna sampler of a searcher (grid: its points are enqueued, the rest random);
    TPE and GP sample `startup_trials` at random before modelling (default: Optuna's). Of pruned
    trials (those a scheduler stopped), TPE ranks them below the completed by how far they got,
    CMA-ES takes their last value (its search space still comes from completed trials alone),
    GP leaves them out (Optuna offers no choice); random, grid and QMC ignore every trial."""
    import optuna

    from tuner.search.searchers.rung_tpe import RungTPESampler

    quiet = {"seed": seed, "warn_independent_sampling": False}  # conditional and categorical
    startup = {} if startup_trials is None else {"n_startup_trials": startup_trials}
    samplers = {  # parameters fall back to independent sampling, as intended
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, **startup),
        "bohb": lambda: RungTPESampler(seed, min_points=startup_trials),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: optuna.samplers.RandomSampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(**quiet, consider_pruned_trials=True),
        "gp": lambda: optuna.samplers.GPSampler(**quiet, **startup),
        "qmc": lambda: optuna.samplers.QMCSampler(**quiet, scramble=True,  # else seed is unused
                                                  warn_asynchronous_seeding=False),
    }
    return samplers[algorithm]()


def build_searcher(study: Any, warm_trials: list[Any] | None = None,
                   stopped_as: str = "pruned") -> Any:
    """Ray's OptunaSearch over the study's define-by-run space (any scheduler but PBT), starting
    from `warm_trials` (finished Optuna trials of an earlier study) when given, its first trials
    near their best with search.start_near; a transfer study's hands each sample out at every
    size. A trial stopped before its budget reaches Optuna as `stopped_as`: "pruned" (with its
    evaluations), or "complete" (Ray's way)."""
    import optuna

    from tuner.search.searchers.optuna_searcher import ResumableOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Define-by-run function")  # GP's sampling is slow
    search = study.search
    points = study.grid_points() if search.algorithm == "grid" else None
    storage = optuna_storage(search.storage) if search.storage else None
    if warm_trials:
        storage = storage or optuna.storages.InMemoryStorage()
        seed_study(storage, study.name, search.mode, warm_trials)
    seed = warm_seed(search.seed, warm_trials) if warm_trials else search.seed
    if warm_trials and search.start_near:
        from tuner.search.searchers.prior_start import near_best

        points = near_best(study, warm_trials, search.start_near, seed)
    sampler = optuna_sampler(search.algorithm, seed, search.startup_trials)
    searcher = ResumableOptunaSearch(space=study.sample, metric=search.metric, mode=search.mode,
                                     sampler=sampler, points_to_evaluate=points,
                                     study_name=study.name, storage=storage,
                                     full_tokens=study.full_trial_tokens(), stopped_as=stopped_as)
    sizes = study.transfer()
    if sizes is None:
        return searcher
    from tuner.search.searchers.transfer_searcher import TransferSearcher

    return TransferSearcher(searcher, *sizes)


def warm_seed(seed: int, warm_trials: list[Any]) -> int:
    """The sampler's seed in a warm-started study: the study's seed and the trials it starts from
    together, so that its random draws are not again those of the study they came from."""
    key = json.dumps([seed, [trial.params for trial in warm_trials]], sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


def optuna_storage(url: str) -> Any:
    """The Optuna storage at `url` (e.g. sqlite:///optuna.db), checked before any trial starts."""
    import optuna

    from tuner.errors import UserError

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # noqa: BLE001 - any failure means the storage is unusable
        raise UserError(f"search.storage {url} cannot be used: {err}") from None


def check_storage_is_free(study: Any) -> None:
    """UserError when search.storage holds an Optuna study of this study's name with trials of
    its own already: a new study would take over its trials (and a space of other kinds would
    fail on them). One an attempt stopped before its first trial left (warm-start trials at
    most) is taken up again."""
    from tuner.errors import UserError
    from tuner.store.redact import redact
    from tuner.store.uri import sqlite_file

    path = sqlite_file(study.search.storage)
    if path is not None and not path.exists():
        return  # a new file: nothing is made before the study's other inputs are checked
    storage = optuna_storage(study.search.storage)
    try:
        trials = storage.get_all_trials(storage.get_study_id_from_name(study.name))
    except KeyError:
        return
    if all(WARM_START_ATTR in trial.user_attrs for trial in trials):
        return
    raise UserError(f"search.storage {redact(study.search.storage)} already holds an Optuna study "
                    f"{study.name!r}: a new study would go on from its trials; pick another "
                    f"--name, or delete that one (optuna delete-study --study-name {study.name} "
                    "--storage URL)")


WARM_START_ATTR = "tuner.warm_start"  # an Optuna trial's user attr: from an earlier study


def seed_study(storage: Any, study_name: str, mode: str, trials: list[Any]) -> None:
    """Add finished `trials` to the Optuna study `study_name` in `storage` (created when missing):
    OptunaSearch loads that study, so its sampler models them before its first suggestion. One
    that holds trials already got them when the study first started (a persistent storage)."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True,
                                direction="minimize" if mode == "min" else "maximize")
    if not study.trials:
        study.add_trials(trials)


def build_scheduler(study: Any) -> Any:
    """The trial scheduler; its max_t is a full trial's budget."""
    from ray.tune import schedulers

    search, max_t = study.search, study.full_trial_tokens()
    timed = {"metric": search.metric, "mode": search.mode, "time_attr": TIME_ATTR}
    if search.scheduler == "asha":
        return schedulers.ASHAScheduler(
            **timed, max_t=max_t, grace_period=min(search.asha.grace_period, max_t),
            reduction_factor=search.asha.reduction_factor, brackets=search.asha.brackets)
    if search.scheduler == "pasha":
        from tuner.search.searchers.pasha import Pasha

        return Pasha(**timed, max_t=max_t, grace_period=min(search.asha.grace_period, max_t),
                     reduction_factor=search.asha.reduction_factor)
    if search.scheduler == "topk":
        from tuner.search.searchers.topk import TopK

        return TopK(**timed, budget=search.topk.budget, k=search.topk.k)
    if search.scheduler == "hyperband":
        return schedulers.HyperBandScheduler(
            metric=search.metric, mode=search.mode, time_attr=HYPERBAND_TIME,
            max_t=search.asha.reduction_factor ** _hyperband_levels(study),
            reduction_factor=search.asha.reduction_factor)
    if search.scheduler == "median":
        from tuner.search.searchers.median_rule import ResumableMedianStoppingRule

        return ResumableMedianStoppingRule(**timed, grace_period=search.median.grace_period)
    if search.scheduler == "pbt":
        return schedulers.PopulationBasedTraining(
            **timed, perturbation_interval=search.pbt.perturbation_interval,
            quantile_fraction=search.pbt.quantile_fraction,
            hyperparam_mutations=pbt_mutations(study),
            custom_explore_fn=functools.partial(clip_to_space, bounds=_bounds(study)))
    return schedulers.FIFOScheduler()


def pbt_mutations(study: Any) -> dict[str, Any]:
    """What PBT perturbs: a range as a Tune domain (×0.8 or ×1.2, then clipped to it), a choice
    as its list (PBT moves to a neighbour or draws again; a domain it would multiply)."""
    from ray.tune.search.sample import Categorical

    return {name: list(dist.categories) if isinstance(dist, Categorical) else dist
            for name, dist in tune_space(study).items() if name in study.search.pbt.params}


def stopping_points(study: Any) -> tuple[float, ...] | None:
    """Tokens at whose first evaluation the scheduler may end a trial early: ASHA's and PASHA's
    rungs (Ray's rule, all brackets), top-K's budget; () for `none` and PBT, which never do;
    None when any evaluation may."""
    search = study.search
    if search.scheduler in ("none", "pbt"):
        return ()
    if search.scheduler == "topk":
        return (float(search.topk.budget),)
    if search.scheduler not in ("asha", "pasha"):
        return None
    max_t = study.full_trial_tokens()
    grace, factor = min(search.asha.grace_period, max_t), search.asha.reduction_factor
    count = int(math.log(max_t / grace) / math.log(factor) + 1)
    return tuple(grace * factor ** k for k in range(count))


def time_unit(study: Any) -> float | None:
    """Tokens per HyperBand time unit, None for the other schedulers: the budget over η^k, the
    largest power of η in the budget's grace periods (so a unit is at least a grace period).
    max_t is η^k units, so that every bracket's rungs (Ray truncates max_t·η^-s) end at the
    budget, not short of it."""
    if study.search.scheduler != "hyperband":
        return None
    factor = study.search.asha.reduction_factor
    return study.full_trial_tokens() / factor ** _hyperband_levels(study)


def _hyperband_levels(study: Any) -> int:
    asha = study.search.asha
    # the epsilon: log(9, 3) is 1.9999999999999998
    return max(math.floor(math.log(study.full_trial_tokens() / asha.grace_period,
                                   asha.reduction_factor) + 1e-9), 0)


def tune_space(study: Any) -> dict[str, Any]:
    """The searched space as Tune domains (PBT draws its population and resamples from these)."""
    from ray import tune

    space: dict[str, Any] = {}
    for name, dist in study.searched().items():
        if dist.key == "loguniform":
            space[name] = tune.loguniform(dist.lo, dist.hi)
        elif dist.key == "uniform":
            space[name] = tune.uniform(dist.lo, dist.hi)
        elif dist.key == "int" and dist.step > 1:  # qrandint rounds to multiples of step
            space[name] = tune.choice(list(range(dist.lo, dist.hi + 1, dist.step)))
        elif dist.key == "int":
            space[name] = (tune.lograndint if dist.log else tune.randint)(dist.lo, dist.hi + 1)
        else:
            space[name] = tune.choice(dist.options())
    return space


def _bounds(study: Any) -> dict[str, tuple[float, float]]:
    return {name: dist.span() for name, dist in study.searched().items()
            if dist.key in ("loguniform", "uniform", "int")}


def clip_to_space(config: dict[str, Any], bounds: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Keep PBT's perturbed values (×1.2, ×0.8) inside the searched ranges (β2 must stay < 1)."""
    for name, (low, high) in bounds.items():
        if name in config:
            config[name] = type(config[name])(min(max(config[name], low), high))
    return config
