"""A study file as a pydantic model of its sections (tuner.space.sections), checked whole.

`build_study` validates a mapping and turns every problem into an `Issue` with its YAML path.
"""

from __future__ import annotations

import copy
import math
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from model.config import TrainConfig, shown
from tuner.space import checks, convert
from tuner.space.distributions import Distribution
from tuner.space.errors import Issue, SpaceError
from tuner.space.sections import (
    TEXT_MAX,
    BudgetSection,
    DataSection,
    HParamsSection,
    ModelSection,
    ResourcesSection,
    SearchSection,
    TrackingSection,
    suggest,
)
from tuner.store.redact import redact

if TYPE_CHECKING:
    from optuna.trial import BaseTrial

Locate = Callable[[tuple[str | int, ...]], "int | None"]


STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # use fullmatch
NAME_RULE = ("must start with a letter or digit and hold only letters, digits, _ . and -, at most "
             "100 of them (it names folders)")
OVERRIDES = {"name": ("name",), "num_samples": ("search", "num_samples"),
             "max_concurrent": ("search", "max_concurrent"), "seed": ("search", "seed"),
             "storage": ("search", "storage"), "algorithm": ("search", "algorithm"),
             "warm_start": ("search", "warm_start"),
             "scheduler": ("search", "scheduler"), "tracking_uri": ("tracking", "uri"),
             "experiment": ("tracking", "experiment"), "device": ("resources", "device"),
             "cpus_per_trial": ("resources", "cpus_per_trial"),
             "gpus_per_trial": ("resources", "gpus_per_trial")}


class Study(BaseModel):
    """A tuning study: what to train, what to search, how long, how, on what, recorded where."""

    model_config = ConfigDict(extra="forbid", title="tuner study")

    name: str = Field("study", description="study name, used for the MLflow experiment and run "
                      "folders (default: the file's name)")
    description: str = Field("", max_length=TEXT_MAX, description="what the study is for")
    data: DataSection = Field(description="the training text")
    model: ModelSection = Field(default_factory=ModelSection,  # type: ignore[valid-type]
                                description="the architecture, each value fixed or searched")
    hparams: HParamsSection = Field(default_factory=HParamsSection,  # type: ignore[valid-type]
                                    description="the hyperparameters, each fixed or searched")
    budget: BudgetSection = Field(  # type: ignore[valid-type]
        description="how long a full trial trains, how often it is evaluated, its seed")
    search: SearchSection = Field(default_factory=SearchSection,
                                  description="the search algorithm, scheduler and trial count")
    resources: ResourcesSection = Field(default_factory=ResourcesSection,
                                        description="CPUs, GPUs and device per trial")
    tracking: TrackingSection = Field(default_factory=TrackingSection,
                                      description="the MLflow store and experiment")

    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)
    _source_path: Path | None = PrivateAttr(None)
    _source_text: str | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not STUDY_NAME.fullmatch(name):
            raise ValueError(f"{name!r} {NAME_RULE}")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> Study:
        if self.model.transferred() and "scheduler" not in self.search.model_fields_set:
            self.search.scheduler = "none"  # a transfer study trains every sample to the end
        issues = checks.study_issues(self)
        if issues:
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(type=PydanticCustomError("space", "{message}", {"message": msg}),
                                 loc=loc, input=None) for loc, msg in issues])
        self._resolve()
        return self

    def _resolve(self) -> None:
        search, full = self.search, convert.tokens_range(self)[1]
        if self.tracking.experiment is None:
            self.tracking.experiment = self.name
        if self.data.source is not None and self.data.vocab_size is None:
            self.data.vocab_size = int(convert.span(self, "vocab_size")[0])  # the smallest model's
        if search.num_samples is None:
            search.num_samples = len(self.grid_points()) if search.algorithm == "grid" else 16
        asha_rungs = search.scheduler in checks.SCHEDULER_SETTINGS["asha"]
        if asha_rungs and search.asha.grace_period is None:
            search.asha.grace_period = max(1, int(full / search.asha.reduction_factor ** 2))
        if search.scheduler == "topk" and search.topk.budget is None:
            search.topk.budget = max(1, full // 9)
        if search.scheduler == "topk" and search.topk.k is None:
            search.topk.k = math.ceil(search.num_samples / 9)
        if search.scheduler == "median" and search.median.grace_period is None:
            search.median.grace_period = max(1, full // 9)
        if search.scheduler == "pbt":
            if search.pbt.perturbation_interval is None:
                search.pbt.perturbation_interval = max(1, full // 8)
            if search.pbt.params is None:
                search.pbt.params = [n for n in checks.PBT_DEFAULT_PERTURB if n in self.searched()]

    @property
    def source_path(self) -> Path | None:
        """The YAML file the study was read from."""
        return self._source_path

    @property
    def source_text(self) -> str | None:
        """The YAML text as written (logged as an artifact)."""
        return self._source_text

    def searched(self) -> dict[str, Distribution]:
        """Readable name → distribution of every searched parameter, condition parents first."""
        return convert.searched(self)

    def sample(self, trial: BaseTrial) -> dict[str, Any]:
        """Define-by-run: suggest each searched parameter whose condition holds; return them."""
        return convert.sample(self, trial)

    def transfer(self) -> tuple[str, list[int]] | None:
        """The model field every sample trains at each size of, and the sizes (None: no
        transfer)."""
        return convert.transfer(self)

    @property
    def trial_count(self) -> int:
        """Trials the study runs: num_samples samples, each at every transfer size."""
        return self.search.num_samples * convert.sizes_per_sample(self)

    def used(self, params: dict[str, Any]) -> dict[str, Any]:
        """The sampled values whose condition holds: those the trainer uses and runs record."""
        return convert.used(self, params)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point of the grid when each searched parameter is a {grid: [...]}."""
        return convert.grid_points(self)

    def trial_config(self, params: dict[str, Any], data_dir: Path | str) -> TrainConfig:
        """The concrete, validated trainer config of a sample; UserError if it is invalid."""
        return convert.trial_config(self, params, data_dir)

    def full_trial_tokens(self) -> int:
        """Tokens of the longest full trial (the scheduler's max_t)."""
        return convert.tokens_range(self)[1]

    def with_overrides(self, **overrides: Any) -> Study:
        """A re-validated copy with command-line overrides (None values are ignored)."""
        raw = copy.deepcopy(self._raw)
        for key, value in overrides.items():
            if key not in OVERRIDES:
                raise TypeError(f"unknown override {key!r} (known: {', '.join(OVERRIDES)})")
            if value is not None:
                *sections, field = OVERRIDES[key]
                target = raw
                for section in sections:
                    target = target.setdefault(section, {})
                target[field] = value
        try:
            return build_study(raw, source_path=self._source_path, source_text=self._source_text)
        except SpaceError as err:  # name the flag that gave a value, not the file
            flags = {".".join(OVERRIDES[k]): f"--{k.replace('_', '-')}" for k, v in
                     overrides.items() if v is not None}
            issues = [i._replace(path=flags[i.path], line=None) if i.path in flags else i
                      for i in err.issues]
            raise SpaceError(self._source_path, issues) from None

    def resolved(self) -> dict[str, Any]:
        """The fully resolved study, defaults filled, as plain JSON-ready data."""
        return self.model_dump(mode="json", by_alias=True)


def build_study(data: Any, *, source_path: Path | None = None, source_text: str | None = None,
                locate: Locate | None = None) -> Study:
    """Validate a parsed study mapping; SpaceError lists every problem with its path and line."""
    try:
        study = Study.model_validate(data)
    except ValidationError as err:
        raise SpaceError(source_path, [_issue(e, locate) for e in err.errors()]) from None
    study._raw = copy.deepcopy(data)
    study._source_path, study._source_text = source_path, source_text
    return study


def _issue(error: Any, locate: Locate | None) -> Issue:
    loc = error["loc"]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden" and tuple(loc) == ("search", "hyperband"):
        message = ("unknown key 'hyperband': HyperBand takes its grace_period and "
                   "reduction_factor from search.asha")
    elif kind == "extra_forbidden":
        message = f"unknown key {loc[-1]!r}{suggest(str(loc[-1]), _keys_at(loc[:-1]))}"
    elif kind == "missing":
        message = "is required"
    elif kind in ("model_type", "dict_type"):
        given = "nothing (null)" if error["input"] is None else shown(error["input"], redact)
        message = f"must be a mapping of keys to values, got {given}"
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif kind != "space":  # pydantic's own words may say what it got: then the value is added
        given = shown(error["input"], redact)
        message = f"{message[0].lower()}{message[1:]}" + (
            f" ({given})" if ", got " in message else f", got {given}")
    at = (*loc, error["ctx"]["key"]) if kind == "space" and "key" in error.get("ctx", {}) else loc
    return Issue(path, locate(at) if locate else None, message)


def _keys_at(loc: tuple[str | int, ...]) -> list[str]:
    """The keys accepted at a YAML path: field names and aliases of the section found there."""
    cls: Any = Study
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        models = [t for t in (field.annotation, *typing.get_args(field.annotation))
                  if isinstance(t, type) and issubclass(t, BaseModel)] if field else []
        if not models:
            return []
        cls = models[0]
    return [*cls.model_fields, *getattr(cls, "aliases", {})]
