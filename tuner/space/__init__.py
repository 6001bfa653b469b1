"""The search-space schema: a study file (YAML) validated against the trainer's symbol table.

`load_study(path)` reads and validates one; a `Study` samples through Optuna's define-by-run API,
enumerates grids and turns each sample into a concrete `TrainConfig`.
"""

from tuner.space.distributions import Choice, Distribution, Grid, IntRange, LogUniform, Uniform
from tuner.space.errors import Issue, SpaceError
from tuner.space.loader import load_study
from tuner.space.schema import Study, build_study


def study_json_schema() -> dict:
    """JSON Schema of a study file, for editors that check YAML as it is typed."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Study.model_json_schema()}


__all__ = ["Choice", "Distribution", "Grid", "IntRange", "Issue", "LogUniform", "SpaceError",
           "Study", "Uniform", "build_study", "load_study", "study_json_schema"]
