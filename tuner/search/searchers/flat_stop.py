"""Stop when flat (search.stop_when_flat): end the study once its best val_loss improved by no
more than a margin over the last N finished trials.

`FlatWatch` (a Tune callback, after the recorder) keeps each trial's best val_loss and, as trials
finish, the study's best; `FlatStopper` hands its decision to Tune's experiment-level stop
(`stop_all`), which ends the running trials; the recorder then ends their runs as stopped and the
parent as FINISHED with the reason. With the margin `noise`, the first time the rule could stop
the study it seed-checks the best completed trial (tuner.search.winners.seed_check, on the
driver, while the trials wait) and takes the seed sd pooled over every trial the study has
seed-checked (the verdict's, tuner.search.winners.verdict) as the margin from then on.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from tuner.errors import UserError
from tuner.search.faults.outcome import outcome
from tuner.store.layout import UNRANKED

NOISE_SEEDS = 2  # the seeds of the noise check when the study sets no search.confirm


@dataclass
class Flatness:
    """The study's best after each finished trial, and whether it went flat."""

    trials: int  # N
    finished: list[float] = field(default_factory=list)  # each finished trial's best, in order

    def improvement(self) -> float | None:
        """How much the best improved over the last N finished trials (None: fewer than N+1)."""
        if len(self.finished) <= self.trials:
            return None
        before = min(self.finished[:-self.trials])
        return before - min(self.finished) if math.isfinite(before) else math.inf


class FlatWatch(tune.Callback):
    """Tune callback: follows the finished trials and decides when the study is flat."""

    def __init__(self, study: Any) -> None:
        settings = study.search.stop_when_flat
        self.study = study
        self.flatness = Flatness(settings.trials)
        self.margin: float | None = None if settings.margin == "noise" else settings.margin
        self.reason = ""  # set once flat: the study ends
        self.bests: dict[str, float] = {}  # each trial's best val_loss so far

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        value = result.get("val_loss")
        if isinstance(value, (int, float)) and math.isfinite(value) and not result.get("diverged"):
            self.bests[trial.trial_id] = min(value, self.bests.get(trial.trial_id, math.inf))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trial)

    def _finished(self, trial: Any) -> None:
        if self.reason:
            return
        counts = outcome(trial, self.study.search).status not in UNRANKED
        self.flatness.finished.append(self.bests.get(trial.trial_id, math.inf) if counts
                                      else math.inf)
        gain = self.flatness.improvement()
        if gain is None or gain == math.inf:
            return
        if self.margin is None:
            self.margin = self._seed_noise()
            if self.margin is None:
                return
        if gain <= self.margin:
            noise = (" (the pooled seed sd)" if self.study.search.stop_when_flat.margin == "noise"
                     else "")
            self.reason = (f"stopped when flat: its best val_loss improved by {gain:.4g} over the "
                           f"last {self.flatness.trials} finished trials, within the margin "
                           f"{self.margin:.4g}{noise}")

    def _seed_noise(self) -> float | None:
        """The seed sd pooled over the trials the study has seed-checked, its best completed
        trial seed-checked now (None: it has no completed trial yet)."""
        from tuner.search.winners.seed_check import candidates, held, recorded, seed_check
        from tuner.store import runs
        from tuner.store.connect import open_client

        client = open_client(self.study.tracking.uri)
        parent = runs.find_parent(client, self.study.tracking.experiment, self.study.name)
        try:
            best = candidates(client, parent, 1)[0][0]
        except UserError:
            return None
        confirm = self.study.search.confirm
        with held(client, parent, lambda line: None), \
                tempfile.TemporaryDirectory(prefix="tuner-noise-") as tmp:
            seed_check(client, parent, best, confirm.seeds if confirm else NOISE_SEEDS, Path(tmp))
            checked = recorded(client, parent)
        sd = checked.noise if checked else math.nan
        return sd if math.isfinite(sd) else None

    def get_state(self) -> dict[str, Any]:
        return {"finished": self.flatness.finished, "margin": self.margin, "reason": self.reason,
                "bests": self.bests}

    def set_state(self, state: dict[str, Any]) -> None:
        self.flatness.finished = list(state["finished"])
        self.margin, self.reason, self.bests = state["margin"], state["reason"], state["bests"]


class FlatStopper(tune.Stopper):
    """Tune stopper: stops the whole study once `watch` found it flat; never one trial."""

    def __init__(self, watch: FlatWatch) -> None:
        self.watch = watch  # one pickle with the callbacks keeps them together

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return bool(self.watch.reason)
