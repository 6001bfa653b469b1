"""Ray's median stopping rule, made to save its state for a resumed study (Ray's saves none)."""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.schedulers import MedianStoppingRule


class ResumableMedianStoppingRule(MedianStoppingRule):
    """MedianStoppingRule whose results can be saved and put back. Ray keys them by trial
    object, and a resumed study has new ones: they are saved by trial id and keyed again to the
    resumed study's trials at its first result. An evaluation recorded again (a trial's last, on
    its completion; one trained again from a checkpoint after a resume or a retry) replaces the
    one recorded before, rather than counting twice in the trial's running mean."""

    _saved: dict[str, Any] | None = None  # put back, not yet keyed to the resumed trials

    def save(self, checkpoint_path: str) -> None:
        kept = (self._time_attr, self._metric)
        state = {
            "results": {trial.trial_id: [{k: r[k] for k in kept if k in r} for r in results]
                        for trial, results in self._results.items()},
            "stopped": [trial.trial_id for trial in self._stopped_trials],
            "last_pause": {trial.trial_id: t for trial, t in self._last_pause.items()},
        }
        if self._saved is not None:  # put back, and not yet keyed: a save before the first result
            state["results"] = {**self._saved["results"], **state["results"]}
            state["stopped"] = sorted({*self._saved["stopped"], *state["stopped"]})
            state["last_pause"] = {**self._saved["last_pause"], **state["last_pause"]}
        with open(checkpoint_path, "wb") as file:
            pickle.dump(state, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self._saved = pickle.load(file)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._recording(tune_controller, trial, result)
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._recording(tune_controller, trial, result)
        super().on_trial_complete(tune_controller, trial, result)

    def _recording(self, tune_controller: Any, trial: Any, result: dict) -> None:
        """Before `result` is recorded: key the saved results, and forget those it replaces."""
        self._key_saved_to(tune_controller.get_trials())
        time = result.get(self._time_attr)
        if time is not None and trial in self._results:
            self._results[trial] = [r for r in self._results[trial] if r[self._time_attr] < time]

    def _key_saved_to(self, trials: list) -> None:
        if self._saved is None:
            return
        by_id = {trial.trial_id: trial for trial in trials}
        saved, self._saved = self._saved, None
        for trial_id, results in saved["results"].items():
            if trial_id in by_id:
                self._results[by_id[trial_id]][:0] = results
        self._stopped_trials.update(by_id[i] for i in saved["stopped"] if i in by_id)
        for trial_id, t in saved["last_pause"].items():
            if trial_id in by_id:
                self._last_pause[by_id[trial_id]] = t
