"""A live view while a study runs (trials, best so far, tokens, ETA) and the summary after it."""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ray import tune
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from model.metrics import perplexity
from model.shell import as_started
from tuner import output
from tuner.output import count
from tuner.search.faults.outcome import outcome, tune_error
from tuner.search.faults.stopping import draining
from tuner.search.run.notebook_view import NotebookLive
from tuner.search.trial.trainable import FORK_TOKENS, TrainedTokens
from tuner.space.convert import span
from tuner.space.params import shown_value
from tuner.store import view
from tuner.store.layout import FINISHED, RUNNING, UNRANKED
from tuner.store.uri import server_address

MAX_ROWS = 12
_SHOWING: set[Live | NotebookLive] = set()  # live views drawing now (Tune may restore its own)
_QUIET = {"views": False}  # set by `quietly`: a restored LiveView has its settings of before


@contextmanager
def quietly(quiet: bool) -> Iterator[None]:
    """Within: the live views show nothing when `quiet` (tuner.search(quiet=True))."""
    before = _QUIET["views"]
    _QUIET["views"] = quiet
    try:
        yield
    finally:
        _QUIET["views"] = before


def stop_live_views() -> None:
    """Stop every live view still drawing: a study that ended by an error or a second stop
    never reached the view's `on_experiment_end`, which would leave the cursor hidden."""
    for live in list(_SHOWING):
        live.stop()
    _SHOWING.clear()


def _tokens(trial: Any) -> int:
    """Tokens the trial has reached (a PBT clone: from its donor's), as its last result says."""
    return int((trial.last_result or {}).get("tokens", 0))


def _trained(trial: Any) -> int:
    """Tokens the trial has trained to reach them: its WSD forks' too."""
    return _tokens(trial) + int((trial.last_result or {}).get(FORK_TOKENS, 0))


def most_tokens(study: Any) -> int:
    """The most tokens a full trial trains: its budget, and its WSD forks' decays, the K_fork runs
    of k/(K_fork+1) of it decaying over at most f_decay each, K_fork/2·f_decay of it in all."""
    full, forks = study.full_trial_tokens(), study.budget.forks or 0
    return full + math.ceil(full * forks * span(study, "decay_fraction")[1] / 2) if forks else full


def _study_best(trials: list, statuses: dict[str, str]) -> tuple[Any, float]:
    """The study's best trial so far and its best val_loss (inf: none ranked yet)."""
    best = min(trials, key=lambda t: (statuses[t.trial_id] in UNRANKED, *_rank(t)), default=None)
    unranked = best is None or statuses[best.trial_id] in UNRANKED
    return best, math.inf if unranked else _best_loss(best)


def _best_loss(trial: Any) -> float:
    """The trial's lowest val_loss so far, from Tune's record (kept across a resume)."""
    return float((trial.metric_analysis.get("val_loss") or {}).get("min", math.inf))


def _rank(trial: Any) -> tuple[float, float]:
    """Best first; a tie goes to the trial that started first, as `tuner best` ranks them."""
    started = trial.run_metadata.start_time  # kept across a resume
    return _best_loss(trial), math.inf if started is None else started


def _params(study: Any, trial: Any) -> str:
    return ", ".join(f"{k}={shown_value(k, v)}"
                     for k, v in sorted(study.used(dict(trial.config)).items()))


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LiveView(tune.Callback):
    """Tune callback that redraws the study's progress on the driver's console (in a notebook:
    one output of the cell); where stderr is not a terminal (a log file), it writes a line per
    finished trial and the last frame instead."""

    budget: Any = None  # the study's BudgetWatch (a class default: a view pickled before it)

    def __init__(self, study: Any, budget: Any = None):
        self.study, self.trial_tokens, self.budget = study, most_tokens(study), budget
        self._live: Live | NotebookLive | None = None

    def setup(self, **info: Any) -> None:
        self._planned = info["total_num_samples"]  # the study's trials, an extension's included
        self._start = time.monotonic()
        self._counter, self._trained = TrainedTokens(), 0  # tokens trained by this driver's trials
        self._done: dict[str, str] = {}  # trial id -> how it finished
        self._caught_up = self._ended = self._draining = self._spent = False
        self._console = output.console(stderr=True, highlight=True)
        self._console.quiet = _QUIET["views"]
        starting = Text(f"study {self.study.name}: setting up its trials…")  # or resuming
        if self._console.quiet:
            return
        if self._console.is_jupyter:
            self._live = NotebookLive(self._console, starting)
        elif self._console.is_terminal:
            self._live = Live(starting, console=self._console, refresh_per_second=2,
                              transient=False)
            self._live.start()
        else:
            self._console.print(starting)
            return
        _SHOWING.add(self._live)

    def _catch_up(self, trials: list) -> None:
        """Once, before the first step (or at the end, for a resumed study with nothing left to
        run): the trials finished before this driver started."""
        if self._caught_up:
            return
        self._caught_up = True
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR"):
                self._done[trial.trial_id] = outcome(trial, self.study.search).status

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._catch_up(trials)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._trained += self._counter.add(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        ended = outcome(trial, self.study.search)
        self._done[trial.trial_id] = ended.status
        if self._live is None:
            self._console.print(self._finished_line(trials, trial, ended.detail), markup=False,
                                highlight=False, soft_wrap=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.on_trial_complete(iteration, trials, trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tries = self.study.search.max_failures + 1
        start = "the start" if trial.checkpoint is None else "its last checkpoint"
        self._console.print(f"trial {trial.trial_id} failed (try {trial.run_metadata.num_failures}"
                            f" of {tries}; retried from {start}): {tune_error(trial)}",
                            markup=False, highlight=False, soft_wrap=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        saving = draining(trials)
        if saving and not self._draining:
            self._console.print(
                f"stopping: the running trials checkpoint their current step "
                f"({count(len(saving), 'trial')}, at most {self.study.search.stop_grace_s:g} s; "
                "stop again to skip this)", markup=False, highlight=False)
        self._draining = bool(saving)
        self._say_budget_spent()
        if self._live is not None and iteration % 5 == 0:
            self._live.update(self.render(trials))

    def _say_budget_spent(self) -> None:
        """Once: the study budget is spent (at a step's end, or the study's, where the result
        that spent it ended the study's last trial)."""
        if self.budget is not None and self.budget.exhausted and not self._spent:
            self._spent = True
            self._console.print(f"study budget spent: {self.budget.tally}; no new trial "
                                "starts, the running ones stop at their next stopping point",
                                markup=False, highlight=False)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._say_budget_spent()
        self._catch_up(trials)
        self._ended = True  # a trial still running or paused (by HyperBand) is interrupted
        if self._live is not None:
            self._live.update(self.render(trials))
            self._live.stop()
            _SHOWING.discard(self._live)
            self._live = None
        else:
            self._console.print(self.render(trials))

    def _status(self, trial: Any) -> str:
        if trial.trial_id in self._done:
            return self._done[trial.trial_id]
        stopped_in = ("TERMINATED", "ERROR", *(("RUNNING", "PAUSED") if self._ended else ()))
        if trial.status in stopped_in:  # how Tune leaves the trials of an interrupted study
            return "interrupted"
        return RUNNING if trial.status == "RUNNING" else trial.status.lower()

    def _progress(self, trials: list, statuses: dict[str, str]) -> str:
        """Where the trials are (tokens) against the most the study can reach, elapsed time and
        an ETA at the rate its trials train."""
        done = sum(_trained(t) for t in trials)
        left = sum(max(self.trial_tokens - _trained(t), 0) for t in trials
                   if statuses[t.trial_id] not in FINISHED)
        left += max(self._planned - len(trials), 0) * self.trial_tokens
        elapsed = time.monotonic() - self._start
        rate = self._trained / elapsed if elapsed > 0 else 0.0  # not lowered by a PBT clone
        eta = 0.0 if left == 0 else left / rate if rate > 0 else math.inf
        return (f"tokens {done:,} of ≤ {done + left:,}   elapsed {_duration(elapsed)}   "
                f"ETA ≤ {_duration(eta)}")  # as if no trial left stopped early

    def _finished_line(self, trials: list, trial: Any, detail: str) -> str:
        """A log's line for a trial that just finished: how, its best loss and the progress."""
        statuses = {t.trial_id: self._status(t) for t in trials}
        finished = sum(1 for v in statuses.values() if v in FINISHED)
        params = _params(self.study, trial)
        best, best_loss = _study_best(trials, statuses)
        study_best = (f"; study best {best_loss:.4f} (trial {best.trial_id})"
                      if math.isfinite(best_loss) else "")
        return (f"trial {trial.trial_id} {detail}; its best val_loss {_best_loss(trial):.4f}"
                f"{f' ({params})' if params else ''}{study_best}; {finished} of "
                f"{self._planned} finished; {self._progress(trials, statuses)}")

    def render(self, trials: list) -> Group:
        """The frame: a headline, the best trial so far and a table of the most telling trials."""
        statuses = {t.trial_id: self._status(t) for t in trials}
        counts = {s: sum(1 for v in statuses.values() if v == s)
                  for s in (RUNNING, "paused", "pending", *FINISHED, "interrupted")}
        head = Text.assemble(
            (f"study {self.study.name}", "bold"),
            f"  {self.study.search.searcher} + {self.study.search.scheduler}   ",
            "  ".join(f"{n} {s}" for s, n in counts.items() if n), "\n",
            self._progress(trials, statuses))
        best, best_loss = _study_best(trials, statuses)
        parts: list[Any] = [head]
        if math.isfinite(best_loss):
            params = _params(self.study, best)
            parts.append(Text(f"best val_loss {best_loss:.4f} (trial {best.trial_id})"
                              + (f": {params}" if params else ""), style="green"))
        parts.append(self._table(trials, statuses))
        return Group(*parts)

    def _table(self, trials: list, statuses: dict) -> Table:
        table = Table(box=None, pad_edge=False)
        for column in ("trial", "status", "tokens", "val_loss", "best"):
            table.add_column(column, justify="left" if column in ("trial", "status") else "right",
                             no_wrap=True)
        table.add_column("hyperparameters", overflow="fold", ratio=1)
        order = sorted(trials, key=lambda t: (statuses[t.trial_id] != RUNNING, *_rank(t)))
        for trial in order[:MAX_ROWS]:
            last = (trial.last_result or {}).get("val_loss")
            table.add_row(trial.trial_id, statuses[trial.trial_id], f"{_tokens(trial):,}",
                          "" if last is None else f"{last:.4f}",
                          "" if last is None else f"{_best_loss(trial):.4f}",
                          _params(self.study, trial))
        return table

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks: keep the settings, not the live display."""
        return {"study": self.study, "trial_tokens": self.trial_tokens, "budget": self.budget,
                "_live": None}


@dataclass
class Summary:
    """The end of a study as MLflow records it."""

    study: str
    parent_run_id: str
    counts: dict[str, int]
    best_trial: str | None = None
    best_run_id: str | None = None
    best_val_loss: float = math.inf
    best_params: dict[str, str] | None = None
    best_by_pbt: bool = False  # PBT changed its values as it ran: no one config reproduces it
    tracking_uri: str = ""  # as shown: a password in it masked
    interrupted: bool = False
    experiment_id: str = ""  # the MLflow experiment that holds the study
    stop_reason: str = ""  # why it ended before its trial count (stop when flat, study budget)


def _ui_link(summary: Summary) -> str:
    """Where the study's runs open in MLflow's UI: on its `mlflow server`, or by `tuner ui`."""
    if summary.tracking_uri.startswith(("http://", "https://")):
        return view.runs_url(server_address(summary.tracking_uri), summary.experiment_id)
    command = as_started(f"tuner ui --study {summary.study} --tracking-uri "
                         f"{shlex.quote(summary.tracking_uri)}")
    local = view.local_url(view.DEFAULT_HOST, view.DEFAULT_PORT)
    return f"{command}  (then open {view.runs_url(local, summary.experiment_id)})"


def print_summary(console: Console, summary: Summary) -> None:
    """The closing lines: what ran, the best trial with its run id, and how to reproduce it."""
    counts = ", ".join(f"{n} {s}" for s, n in summary.counts.items() if n) or "no trial finished"
    state = "interrupted" if summary.interrupted else "finished" + (
        f" ({summary.stop_reason})" if summary.stop_reason else "")
    console.print(f"[bold]study {summary.study}[/] {state}: {counts}")
    console.print(f"MLflow parent run {summary.parent_run_id} ({escape(summary.tracking_uri)})")
    console.print(f"compare the runs: {_ui_link(summary)}", highlight=False, soft_wrap=True,
                  markup=False)
    if summary.best_run_id is None or not math.isfinite(summary.best_val_loss):
        console.print("[yellow]no trial reached a finite validation loss without diverging or "
                      "failing[/]")
        return
    params = ", ".join(f"{k}={shown_value(k, v)}"
                       for k, v in sorted((summary.best_params or {}).items()))
    so_far = " so far" if summary.interrupted else ""  # --resume may train it on, or others
    console.print(f"best trial{so_far} {summary.best_trial}: MLflow run {summary.best_run_id}")
    console.print(f"  val_loss {summary.best_val_loss:.4f}, perplexity "
                  f"{perplexity(summary.best_val_loss):.2f}")
    if params:
        console.print(f"  {params}" + (" (as PBT left them)" if summary.best_by_pbt else ""))
    if summary.best_by_pbt:
        console.print("PBT changed its values as it ran: no one config reproduces it")
        return
    console.print(f"reproduce it{' as far as it trained' if so_far else ''} with:")
    uri = shlex.quote(summary.tracking_uri)
    replay = f"tuner replay {summary.best_run_id} --tracking-uri {uri}"
    console.print(f"  {as_started(replay)}", highlight=False, soft_wrap=True, markup=False)

