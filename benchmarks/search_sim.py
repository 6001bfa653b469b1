"""A study simulated on a table of learning curves, without Ray: the study's own searcher and
scheduler (tuner.search.searchers.algorithms: Ray's OptunaSearch with the Optuna sampler, Ray's
ASHA, HyperBand or median rule) are driven as Tune's controller drives them, and each trial is
answered from a table as a replayed study's (`tuner search --curve-table`) is, from a table's
nearest configuration of the same B by length-scale-weighted distance (`TableAnswers`), or from a
surrogate (tuner.search.trial.surrogate: any point's curve, the study's seed its noise).

Time is tokens trained (`clock="tokens"`, as on a GPU, where a token costs the same at every B)
or the table's CPU seconds a run at the trial's B (`clock="cpu"`): a trial started at time t
reports its evaluation at k tokens at t + k·(seconds a token), and the `slots` trials that run
at once (max_concurrent, or what the resources allow) advance together; events at the same
time are taken in the order they were scheduled. With a token `budget` (as a study's
`study_budget`), no trial starts once the tokens trained reach it, and each running trial goes
on to its next stopping point (ASHA's next rung, or its end) and stops there. Each step
is one of Tune's: ask the searcher for trials (as many pending at once as Tune allows), start
what the scheduler picks and the pending trials while a slot is free, then handle one event (a
result, or a trial's function returning after its last).

    from search_sim import simulate   # benchmarks/ on sys.path
    run = simulate(load_study(...), curve_table.load(...))
    run.best, run.tokens, run.curve, run.times, run.trials
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray.tune.experiment.trial import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from tuner.search.searchers.algorithms import (
    build_scheduler,
    build_searcher,
    stopping_points,
    time_unit,
)
from tuner.search.searchers.flat_stop import NOISE_SEEDS, Flatness
from tuner.search.trial.curve_table import CurveTable
from tuner.search.trial.surrogate import Surrogate
from tuner.search.trial.trainable import HYPERBAND_TIME, TIME_ATTR
from tuner.space.checks import SCHEDULER_SETTINGS, STARTUP_SEARCHERS

PENDING, RUNNING, PAUSED, TERMINATED = Trial.PENDING, Trial.RUNNING, Trial.PAUSED, Trial.TERMINATED


@dataclass(eq=False)  # hashed by identity, as the schedulers key Tune's trials
class SimTrial:
    """A trial as Ray's schedulers read it (Tune's Trial is too heavy to make thousands of), and
    what the simulation keeps of it."""

    trial_id: str
    config: dict[str, Any]
    row: int  # the table's configuration that answers it (-1: a surrogate does)
    started: int  # its place in the order trials were created
    losses: np.ndarray = field(default_factory=lambda: np.zeros(0))  # its val_loss curve
    true_final: float = math.nan  # its configuration's noise-free final val_loss
    pace: float = 1.0  # the clock's time a token of it takes
    start: float = -1  # the time it first ran
    status: str = PENDING
    is_saving: bool = False
    last_result: dict[str, Any] = field(default_factory=dict)
    points: int = 0  # evaluations reported
    tokens: int = 0  # tokens trained
    best: float = math.inf  # its lowest val_loss
    ended: str = ""  # completed, stopped or diverged

    def __repr__(self) -> str:
        return f"SimTrial({self.trial_id}, row {self.row}, {self.status})"


@dataclass
class SimStudy:
    """A simulated study's outcome."""

    trials: list[SimTrial]
    curve: list[tuple[int, float]]  # after each evaluation: (tokens trained so far, best so far)
    times: list[float]  # the clock's time at each of those evaluations
    truths: list[float]  # at each of those evaluations: the recommendation's noise-free final
    tokens: int  # trained by all trials, and the flat rule's seed check
    best: SimTrial | None  # what `tuner best` recommends: the lowest val_loss, not diverged
    stop_reason: str = ""


@dataclass(frozen=True)
class Answer:
    """What answers one trial: its curve at the source's tokens, its configuration's noise-free
    final val_loss, a full run's seconds, the table's row (-1: none)."""

    losses: np.ndarray
    true_final: float
    seconds: float
    row: int = -1


class TableAnswers:
    """A table's answers: the nearest configuration in the unit cube, as `tuner search
    --curve-table` takes it; or, given `length_scales`, the nearest of the same value of the
    choice columns, each coordinate divided by its length scale. Its seed is seed mod 2."""

    def __init__(self, table: CurveTable, length_scales: np.ndarray | None = None) -> None:
        self.table, self.tokens, self.scales = table, table.tokens, length_scales
        self.choices = [i for i, dist in enumerate(table.space.values()) if "choice" in dist]
        self.true_final = table.mean_final
        self.batch = list(table.space).index("batch_size") if "batch_size" in table.space else -1
        column = table.params[:, self.batch] if self.batch >= 0 else np.zeros(len(table.params))
        self.seconds = {value: float(np.nanmean(table.cpu_s[column == value]))
                        for value in np.unique(column)}  # a full run's, at each B

    def check_study(self, study: Any) -> None:
        self.table.check_study(study)

    def row(self, config: Mapping[str, Any]) -> int:
        if self.scales is None:
            return self.table.nearest(config)
        point = self.table.point(config)
        same = np.all(self.table.unit[:, self.choices] == point[self.choices], axis=1)
        distance = (((self.table.unit - point) / self.scales) ** 2).sum(axis=1)
        return int(np.argmin(np.where(same, distance, np.inf)))

    def answer(self, config: Mapping[str, Any], seed: int) -> Answer:
        row = self.row(config)
        b = self.table.params[row, self.batch] if self.batch >= 0 else 0.0
        return Answer(self.table.val_loss[row, self.table.seed_index(seed)],
                      float(self.true_final[row]), self.seconds[b], row)


class SurrogateAnswers:
    """A surrogate's answers: any point's curve, with the noise of the trial's seed."""

    def __init__(self, surrogate: Surrogate) -> None:
        self.surrogate, self.tokens = surrogate, surrogate.tokens

    def check_study(self, study: Any) -> None:
        self.surrogate = self.surrogate.for_study(study)

    def answer(self, config: Mapping[str, Any], seed: int) -> Answer:
        mean = self.surrogate.mean(config)
        noise = self.surrogate.noise(self.surrogate.point(config)[None], seed)[0]
        return Answer(mean + noise, float(mean[-1]), self.surrogate.run_seconds(config))


def answers(source: CurveTable | Surrogate | TableAnswers | SurrogateAnswers) -> Any:
    """What answers a simulated study's trials from `source`."""
    if isinstance(source, CurveTable):
        return TableAnswers(source)
    return SurrogateAnswers(source) if isinstance(source, Surrogate) else source


def with_search(base: Mapping[str, Any], seed: int, **search: Any) -> dict[str, Any]:
    """The study file `base` (a mapping) with its `search` settings changed (those its searcher
    or scheduler would not use left out, None ones too), searcher and training seeds `seed`."""
    data = json.loads(json.dumps(base))
    settings = {**data.get("search", {}), **search, "seed": seed}
    for key, users in SCHEDULER_SETTINGS.items():
        if settings.get("scheduler", "asha") not in users:
            settings.pop(key, None)
    if settings.get("algorithm", "tpe") not in STARTUP_SEARCHERS:
        settings.pop("startup_trials", None)
    data["search"] = {key: value for key, value in settings.items() if value is not None}
    data["budget"] = {**data["budget"], "seed": seed}
    return data


def simulate(study: Any, source: Any, slots: int | None = None, budget: int | None = None,
             clock: str = "tokens", warm_trials: list[Any] | None = None) -> SimStudy:
    """Run `study` (a loaded study file, the one the table or surrogate `source` stands for:
    UserError if not) to its end; `slots` trials at once where its search sets no
    max_concurrent; within `budget` tokens if given; time on `clock` ("tokens" or "cpu"); its
    searcher warm-started from `warm_trials` (Optuna trials) as `tuner search --warm-start`'s."""
    source = answers(source)
    source.check_study(study)
    return _Controller(study, source, slots, budget, clock, warm_trials).run()


def earlier_trials(earlier: Any, study: Any, source: Any, slots: int, share: float
                   ) -> list[Any]:
    """The trials of the study `earlier`, simulated on `source`, as Optuna trials of `study`'s
    space (as `tuner search --warm-start` takes them), each told its val_loss at `share` of the
    budget, with its evaluations up to there: a shorter-budget study's proxy (mid-schedule, not
    annealed). `earlier` is one whose trials all train to the end (no scheduler), so each has
    those evaluations."""
    from tuner.search.searchers.history import optuna_trials

    source = answers(source)
    point = int(np.searchsorted(source.tokens, share * source.tokens[-1]))
    run = simulate(earlier, source, slots)
    points, curves = [], {}
    for index, trial in enumerate(run.trials):
        told = float(trial.losses[point])
        points.append((trial.config, told if math.isfinite(told) else math.inf))
        curves[index] = {k + 1: float(loss) for k, loss in enumerate(trial.losses[:point + 1])}
    return optuna_trials(study, points, curves)


class _Controller:
    """Tune's controller, as far as a searcher and a scheduler see it."""

    def __init__(self, study: Any, source: Any, slots: int | None, budget: int | None,
                 clock: str, warm_trials: list[Any] | None) -> None:
        search = study.search
        random.seed(search.seed)  # as tuner.search.run.runner seeds ASHA's bracket draws
        np.random.seed(search.seed)
        self.study, self.source, self.tokens = study, source, source.tokens
        self.budget, self.cpu_clock = budget, clock == "cpu"
        self.rungs = stopping_points(study)
        self.searcher = build_searcher(study, warm_trials)
        if search.max_concurrent:  # what Tune wraps it in for max_concurrent_trials
            self.searcher = ConcurrencyLimiter(self.searcher, search.max_concurrent)
        self.max_pending = search.max_concurrent or 1  # Tune's, for a searcher of its own
        self.slots = search.max_concurrent or slots
        if not self.slots:
            raise ValueError("a study without max_concurrent needs slots")
        self.scheduler = build_scheduler(study)
        self.unit = time_unit(study)
        self.flat = Flatness(search.stop_when_flat.trials) if search.stop_when_flat else None
        self.margin = None if self.flat is None or search.stop_when_flat.margin == "noise" \
            else search.stop_when_flat.margin
        self.trials: list[SimTrial] = []
        self.queue: list[SimTrial] = []  # pending trials, in the order they asked to start
        self.events: list[tuple[int, int, str, SimTrial]] = []  # (time, order, kind, trial)
        self.order = 0
        self.now = 0.0
        self.times: list[float] = []
        self.running = 0
        self.spent = 0  # tokens trained by all trials
        self.finished_search = False
        self.extra_tokens = 0  # the flat rule's seed check
        self.curve: list[tuple[int, float]] = []
        self.truths: list[float] = []
        self.leader: SimTrial | None = None  # the recommendation so far (`tuner best`'s rule)
        self.stop_reason = ""

    # What Ray's schedulers call on Tune's controller
    def get_trials(self) -> list[SimTrial]:
        return self.trials

    def get_live_trials(self) -> list[SimTrial]:
        return [t for t in self.trials if t.status != TERMINATED]

    def has_resources_for_trial(self, trial: SimTrial) -> bool:
        return self.running < self.slots

    def stop_trial(self, trial: SimTrial) -> None:
        """Tune's stop_trial: the scheduler and searcher told, then the trial ends."""
        if trial.status == TERMINATED:
            return
        if trial.status in (PENDING, PAUSED):
            self.scheduler.on_trial_remove(self, trial)
            self.searcher.on_trial_complete(trial.trial_id)
        else:
            self.scheduler.on_trial_complete(self, trial, trial.last_result)
            self.searcher.on_trial_complete(trial.trial_id, result=trial.last_result)
        self._end(trial)
        self._flat_check(trial)

    def run(self) -> SimStudy:
        while not self._done():
            self._ask()
            self._start()
            if not self.events:
                raise RuntimeError("simulation stalled: no trial can run")  # a scheduler's bug
            self.now, _, kind, trial = heapq.heappop(self.events)
            if kind == "result":
                self._result(trial)
            else:  # its function returned: Tune's duplicate of the last result, done
                self.stop_trial(trial)
            if self.stop_reason:
                for other in self.trials:  # Tune's stop_all: no scheduler or searcher call
                    if other.status != TERMINATED:
                        self._end(other)
                self.finished_search = True
        ranked = [t for t in self.trials if t.ended != "diverged" and math.isfinite(t.best)]
        best = min(ranked, key=lambda t: (t.best, t.started), default=None)
        return SimStudy(self.trials, self.curve, self.times, self.truths,
                        self.spent + self.extra_tokens, best, self.stop_reason)

    def _done(self) -> bool:
        return self.finished_search and all(t.status == TERMINATED for t in self.trials)

    def _ask(self) -> None:
        """Tune's _maybe_update_trial_queue: new trials while fewer than max_pending wait."""
        while not self.finished_search and sum(
                t.status == PENDING for t in self.trials) < self.max_pending:
            trial_id = f"{len(self.trials):05d}"
            config = self.searcher.suggest(trial_id)
            if config is None:
                return
            answer = self.source.answer(config, self.study.budget.seed)
            pace = answer.seconds / int(self.tokens[-1]) if self.cpu_clock else 1.0
            trial = SimTrial(trial_id, config, answer.row, len(self.trials), answer.losses,
                             answer.true_final, pace)
            self.trials.append(trial)
            self.scheduler.on_trial_add(self, trial)
            self.queue.append(trial)
            self.finished_search = len(self.trials) >= self.study.trial_count

    def _start(self) -> None:
        """Tune's _maybe_add_actors: the scheduler's pick, then pending trials, while a slot
        is free."""
        chosen = self.scheduler.choose_trial_to_run(self)
        if chosen is not None and chosen not in self.queue:
            chosen.status = PENDING
            self.queue.append(chosen)
        while self.queue and self.running < self.slots:
            trial = self.queue.pop(0)
            trial.status = RUNNING
            trial.start = self.now if trial.start < 0 else trial.start
            self.running += 1
            self._next_event(trial)

    def _next_event(self, trial: SimTrial) -> None:
        ahead = int(self.tokens[trial.points]) - trial.tokens
        self._push(self.now + ahead * trial.pace, "result", trial)

    def _push(self, time: float, kind: str, trial: SimTrial) -> None:
        heapq.heappush(self.events, (time, self.order, kind, trial))
        self.order += 1

    def _result(self, trial: SimTrial) -> None:
        """Tune's _process_trial_result for the trial's next evaluation, then its decision."""
        k = trial.points
        tokens = int(self.tokens[k])
        loss = float(trial.losses[k])
        self.spent += tokens - trial.tokens
        if self.budget is not None and self.spent >= self.budget and not self.finished_search:
            self._spent_budget()
        trial.points, trial.tokens = k + 1, tokens
        diverged = not math.isfinite(loss)
        result = {TIME_ATTR: tokens, "val_loss": loss, "training_iteration": k + 1,
                  "diverged": float(diverged)}
        if self.unit:
            result[HYPERBAND_TIME] = tokens / self.unit
        if not diverged:
            trial.best = min(trial.best, loss)
        so_far = self.curve[-1][1] if self.curve else math.inf
        if not diverged and loss < so_far:
            self.leader = trial
        self.curve.append((self.spent, min(loss if not diverged else math.inf, so_far)))
        self.times.append(self.now)
        self.truths.append(self.leader.true_final if self.leader else math.inf)
        decision = self.scheduler.on_trial_result(self, trial, result)
        if decision != TrialScheduler.STOP:
            self.searcher.on_trial_result(trial.trial_id, result)
        trial.last_result = result
        if diverged:
            trial.ended = "diverged"
        if decision == TrialScheduler.STOP or self._budget_stop(trial):
            self.stop_trial(trial)
        elif decision == TrialScheduler.PAUSE:
            trial.status = PAUSED
            self.running -= 1
        elif diverged or trial.points == len(self.tokens):
            self._push(self.now, "end", trial)
        else:
            self._next_event(trial)

    def _end(self, trial: SimTrial) -> None:
        if trial.status == RUNNING:
            self.running -= 1
            self.events = [e for e in self.events if e[3] is not trial]
            heapq.heapify(self.events)
        if trial in self.queue:
            self.queue.remove(trial)
        trial.status = TERMINATED
        if not trial.ended:
            trial.ended = "completed" if trial.points == len(self.tokens) else "stopped"

    def _spent_budget(self) -> None:
        """The budget is spent: no trial starts; the waiting and paused ones end unrun."""
        self.finished_search = True
        for trial in [t for t in self.trials if t.status in (PENDING, PAUSED)]:
            self.stop_trial(trial)

    def _budget_stop(self, trial: SimTrial) -> bool:
        """Whether a running trial stops here for the spent budget: at a stopping point (any
        evaluation where the scheduler may stop at any)."""
        if self.budget is None or self.spent < self.budget or trial.points == len(self.tokens):
            return False
        return self.rungs is None or trial.tokens in self.rungs

    def _flat_check(self, trial: SimTrial) -> None:
        """FlatWatch's rule on a finished trial; its noise margin seed-checked on the table: the
        best completed trial's final val_loss at its seed and NOISE_SEEDS more (table seeds
        s + 1, s + 2, … mod 2), their tokens spent."""
        if self.flat is None or self.stop_reason:
            return
        self.flat.finished.append(trial.best if trial.ended != "diverged" else math.inf)
        gain = self.flat.improvement()
        if gain is None or gain == math.inf:
            return
        if self.margin is None:
            done = [t for t in self.trials if t.ended == "completed" and math.isfinite(t.best)]
            if not done:
                return
            best = min(done, key=lambda t: (t.best, t.started))
            seeds = [self.study.budget.seed + i for i in range(NOISE_SEEDS + 1)]
            finals = [float(self.source.answer(best.config, s).losses[-1]) for s in seeds]
            self.margin = float(np.std(finals, ddof=1))
            self.extra_tokens += NOISE_SEEDS * int(self.tokens[-1])
        if gain <= self.margin:
            self.stop_reason = f"flat: {gain:.4g} ≤ {self.margin:.4g}"
