"""tuner: hyperparameter studies of a Transformer LM (Ray Tune, Optuna, MLflow), from the `tuner`
command line or from Python (docs/python-api.md):

    study = tuner.load_study("search_spaces/quickstart.yaml")
    result = tuner.search(study)
    tuner.trials("quickstart")

The names below load on first use: `import tuner` imports neither Ray, torch nor MLflow.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuner.api import (
        SearchResult,
        SeedCheck,
        Trial,
        best,
        confirm,
        confirmation,
        generate,
        load_study,
        probe,
        register,
        replay,
        report,
        search,
        top_trials,
        trials,
    )
    from tuner.errors import TrackingError, UserError
    from tuner.inspect.register import Registered
    from tuner.probe.run import ProbeResult
    from tuner.search.winners.verdict import Confirmation
    from tuner.space import Study
    from tuner.space.errors import SpaceError

__all__ = ["Confirmation", "ProbeResult", "Registered", "SearchResult", "SeedCheck", "SpaceError",
           "Study", "TrackingError", "Trial", "UserError", "best", "confirm", "confirmation",
           "generate", "load_study", "probe", "register", "replay", "report", "search",
           "top_trials", "trials"]
_WHERE = {**dict.fromkeys(__all__, "tuner.api"), "TrackingError": "tuner.errors",
          "UserError": "tuner.errors", "SpaceError": "tuner.space.errors", "Study": "tuner.space",
          "Confirmation": "tuner.search.winners.verdict", "ProbeResult": "tuner.probe.run",
          "Registered": "tuner.inspect.register"}
_FUNCTIONS = ("probe", "search")  # each also a subpackage's name


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tuner' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


class _Package(types.ModuleType):
    """`tuner.search` and `tuner.probe` are the functions: importing the subpackage of that name
    binds the package's attribute to it, which would hide the function."""

    def __getattribute__(self, name: str) -> Any:
        if name in _FUNCTIONS:
            return getattr(importlib.import_module("tuner.api"), name)
        return super().__getattribute__(name)


sys.modules[__name__].__class__ = _Package
