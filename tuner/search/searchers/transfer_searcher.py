"""A transfer study's searcher: each sample of the inner searcher runs once at every size.

The inner searcher sees only the first size's trial (the proxy a user would tune); the trials
at the other sizes train the same values, so that the α–loss curves of the sizes compare.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher


class TransferSearcher(Searcher):
    """Wraps `searcher`: a sample it suggests is handed out once per value of `field` in `sizes`,
    in order; results reach it from the first size's trial alone."""

    def __init__(self, searcher: Searcher, field: str, sizes: list[int]) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.field, self.sizes = searcher, field, list(sizes)
        self._pending: list[dict[str, Any]] = []  # the current sample at the sizes left
        self._proxies: set[str] = set()  # trial ids the inner searcher suggested

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._pending:
            return self._pending.pop(0)
        config = self.searcher.suggest(trial_id)
        if not isinstance(config, dict):  # None: none now; Searcher.FINISHED: no more
            return config
        self._proxies.add(trial_id)
        self._pending = [{**config, self.field: size} for size in self.sizes[1:]]
        return {**config, self.field: self.sizes[0]}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._proxies:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if trial_id in self._proxies:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        """What Tune saves of a wrapper (it saves the inner searcher apart, by its own calls)."""
        return {"pending": list(self._pending), "proxies": set(self._proxies)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._pending, self._proxies = state["pending"], state["proxies"]
