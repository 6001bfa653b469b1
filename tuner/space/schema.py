"""A study file as pydantic models: data, model, hparams, budget, search, resources, tracking.

The model, hparams and budget sections are generated from the trainer's `HParam` definitions.
`build_study` validates a mapping and turns every problem into an `Issue` with its YAML path.
"""

from __future__ import annotations

import copy
import difflib
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from model.config import HParam, TrainConfig, shown
from tuner.space import checks, convert
from tuner.space.distributions import Distribution
from tuner.space.errors import Issue, SpaceError
from tuner.space.params import (
    ALL_DEFS,
    BUDGET_DEFS,
    HPARAM_DEFS,
    MODEL_DEFS,
    Section,
    section_aliases,
    section_fields,
)
from tuner.store.redact import redact, remember
from tuner.store.uri import KEPT_NOTHING, in_memory

if TYPE_CHECKING:
    from optuna.trial import BaseTrial

Locate = Callable[[tuple[str | int, ...]], "int | None"]


def _param_section(name: str, doc: str, defs: dict[str, HParam], searchable: bool) -> type[Section]:
    cls = create_model(name, __base__=Section, __doc__=doc, **section_fields(defs, searchable))
    cls.defs, cls.aliases = defs, section_aliases(defs)
    return cls


ModelSection = _param_section(
    "ModelSection", "Architecture of the Transformer LM and its ablation switches; each value a "
    "constant or a distribution. Keys: name or symbol.", MODEL_DEFS, searchable=True)
HParamsSection = _param_section(
    "HParamsSection", "The symbol table: each training hyperparameter a constant or a "
    "distribution. Keys: name, symbol or alias (lr_max, α_max, lr).", HPARAM_DEFS, searchable=True)
BudgetSection = _param_section(
    "BudgetSection", "The length of a full trial (tokens or T_total), its evaluations and seed; "
    "fixed for the study.", BUDGET_DEFS, searchable=False)


def _remembered_uri(value: Any) -> Any:
    """A URI of the file (tracking.uri, search.storage): masked by structure in all tuner prints."""
    if isinstance(value, str):
        remember(value)
    return value


TEXT_MAX = 10_000  # characters of a description or a URI: a study file is no place for a book
DATA_PATHS = ("path", "input", "valid", "tokenizer", "cache_dir")  # the data section's paths


def expand_home(path: Path) -> Path:
    """`path` with ~ or ~user expanded, as a shell would; ValueError naming an unknown one."""
    try:
        return path.expanduser()
    except RuntimeError as err:  # ~nosuchuser, or ~ with no HOME
        raise ValueError(f"cannot expand {str(path)!r}: {err}") from None


class DataSection(Section):
    """The training text: a prepared dataset folder, or a source that `tuner data prepare` reads."""

    path: Path | None = Field(None, description="a prepared dataset folder (train.npy, valid.npy, "
                             "meta.json, tokenizer); give this or source")
    source: Literal["files", "synthetic", "tinystories"] | None = Field(
        None, description="build the dataset from text files (input, valid), the built-in "
        "synthetic corpus, or TinyStories")
    input: Path | None = Field(None, description="training text file (source files)")
    valid: Path | None = Field(None, description="validation text file (default: valid_fraction of "
                              "the input is held out)")
    valid_fraction: float | None = Field(None, gt=0, lt=1, description="share of the text held "
                                         "out for validation when no valid file is given")
    vocab_size: int | None = Field(None, ge=1, description="tokenizer vocabulary size (default: "
                                   "model.vocab_size)")
    special_tokens: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, description="tokens the tokenizer keeps whole, e.g. <|endoftext|>")
    tokenizer: Path | None = Field(None, description="tokenizer to use instead of training one "
                                  "(see `tuner data prepare --help`)")
    synthetic_bytes: int | None = Field(None, ge=1, description="size of the synthetic corpus in "
                                        "bytes (source synthetic)")
    seed: int | None = Field(None, ge=0, description="seed of the synthetic corpus (source "
                             "synthetic)")
    cache_dir: Path | None = Field(None, description="where prepared datasets are cached")

    @field_validator(*DATA_PATHS)
    @classmethod
    def _home(cls, path: Path | None) -> Path | None:
        return None if path is None else expand_home(path)

    def prepare_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `tuner.datasets.prepare_dataset`; unset ones keep its defaults."""
        return {k: v for k, v in self.model_dump(exclude={"path"}).items() if v is not None}


class AshaSettings(Section):
    """ASHA and HyperBand: trials compete at rungs of grace_period·reduction_factor^k tokens."""

    grace_period: int | None = Field(None, ge=1, description="tokens every trial trains before it "
                                     "can be stopped (default: a full trial / reduction_factor²)")
    reduction_factor: float = Field(3.0, gt=1, description="keep the best 1/reduction_factor of "
                                    "the trials at each rung")
    brackets: int = Field(1, ge=1, description="number of ASHA brackets (grace periods); asha "
                          "only")


class MedianSettings(Section):
    """Median stopping: stop a trial whose best result is below the median of the others so far."""

    grace_period: int | None = Field(None, ge=1, description="tokens before a trial can be "
                                     "stopped (default: a full trial / 9)")


class PbtSettings(Section):
    """Population-based training: bad trials copy good ones' weights and perturb the copies."""

    perturbation_interval: int | None = Field(None, ge=1, description="tokens between exploit and "
                                              "explore steps (default: a full trial / 8)")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="the bottom fraction of "
                                     "trials copies the top fraction")
    params: list[str] | None = Field(None, description="searched parameters PBT perturbs, by name "
                                     "or symbol (default: those of α_max, β2, λ that are searched)")

    @field_validator("params")
    @classmethod
    def _names(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        keys = {**{n: n for n in ALL_DEFS}, **section_aliases(ALL_DEFS)}
        unknown = [n for n in names if n not in keys]
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r}{_suggest(unknown[0], keys)}")
        return [keys[n] for n in names]


class SearchSection(Section):
    """How trials are proposed (Optuna sampler) and stopped early (Ray Tune scheduler)."""

    algorithm: Literal["tpe", "random", "grid", "cmaes", "gp", "qmc"] = Field(
        "tpe", description="Optuna sampler: TPE, random, grid (enumerates the {grid: [...]} "
        "values), CMA-ES, Gaussian process, or quasi-Monte Carlo")
    scheduler: Literal["asha", "hyperband", "median", "pbt", "none"] = Field(
        "asha", description="Ray Tune scheduler that stops (or, for pbt, perturbs) trials early")
    # Every part of tuner (ASHA, the searcher, the best trial, divergence) ranks by val_loss
    metric: Literal["val_loss"] = Field("val_loss", description="the metric trials are ranked by")
    mode: Literal["min"] = Field("min", description="the metric is minimised")
    num_samples: int | None = Field(None, ge=1, description="trials to run (default: every grid "
                                    "point for grid, else 16); a transfer study runs each at "
                                    "every size")
    max_concurrent: int | None = Field(None, ge=1, description="most trials at once (default: "
                                       "as many as the resources allow)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the searcher")
    startup_trials: int | None = Field(None, ge=1, description="random trials before the tpe or gp "
                                       "searcher starts modelling the results (default: Optuna's, "
                                       "10)")
    max_failures: int = Field(2, ge=0, description="retries, from its checkpoint, of a trial "
                              "whose process died (out of memory, preempted) or whose GPU ran "
                              "out of memory")
    stop_grace_s: float = Field(30.0, ge=0, description="seconds a stopped study (Ctrl-C, "
                                "SIGTERM, SIGHUP, SIGUSR1) gives its running trials to checkpoint "
                                "the step they are at; 0 stops them at once")
    checkpoint_interval_s: float = Field(300.0, ge=0, description="seconds of a trial's training "
                                         "between its checkpoints (written in the background at "
                                         "an evaluation; a trial also keeps one at its end, past "
                                         "half its budget and at a stop); 0 keeps one at every "
                                         "evaluation, as pbt and hyperband always do")
    storage: str | None = Field(None, max_length=TEXT_MAX, description="Optuna storage URL that "
                                "keeps the search state (default: in memory)")
    warm_start: str | None = Field(None, max_length=TEXT_MAX, description="an earlier study in "
                                   "the same tracking store, with this space: the searcher starts "
                                   "from its finished trials")
    asha: AshaSettings = Field(default_factory=AshaSettings, description="settings of the asha "
                               "and hyperband schedulers")
    median: MedianSettings = Field(default_factory=MedianSettings, description="settings of the "
                                   "median scheduler")
    pbt: PbtSettings = Field(default_factory=PbtSettings, description="settings of the pbt "
                             "scheduler")

    _remembered = field_validator("storage", mode="before")(_remembered_uri)

    @property
    def searcher(self) -> str:
        """The sampler that proposes the trials: PBT draws its population at random."""
        return "random" if self.scheduler == "pbt" else self.algorithm


class ResourcesSection(Section):
    """What each trial gets from Ray: CPUs, a GPU or a fraction of one, and the torch device."""

    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs reserved per trial")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs per trial; a fraction such as 0.25 "
                                  "runs 4 trials on one GPU")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device of a trial "
                                                    "(auto: cuda when the trial has a GPU)")
    deterministic: bool = Field(False, description="deterministic GPU kernels: slower trials "
                                "whose GPU replays are bit-exact (CPU trials always are)")
    peak_flops: float | None = Field(None, gt=0, description="the GPU's peak FLOP/s, for mfu "
                                     "(default: its dense bf16 peak, looked up by its name)")
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile each trial's model (auto: on a GPU, not on the CPU): "
        "about 1.8x the tokens/s on a GPU, after compiling once per shape and machine")

    @field_validator("gpus_per_trial")
    @classmethod
    def _at_most_one(cls, gpus: float) -> float:
        if gpus > 1:  # Ray would reserve them all for a trainer that uses one
            raise ValueError(f"{gpus:g}: a trial trains on one GPU, so give at most 1 (a fraction "
                             "such as 0.25 shares one)")
        return gpus


class TrackingSection(Section):
    """Where MLflow records the study's runs."""

    uri: str = Field("sqlite:///mlflow.db", min_length=1, max_length=TEXT_MAX,
                     description="MLflow tracking URI")
    experiment: str | None = Field(None, min_length=1, max_length=TEXT_MAX,
                                   description="MLflow experiment (default: the study name)")
    log_checkpoints: Literal["best", "completed", "none"] = Field(
        "completed", description="which trials' final checkpoints are logged as MLflow "
        "artifacts: every completed trial's and the best's (completed), the best's only, or none")

    _remembered = field_validator("uri", mode="before")(_remembered_uri)

    @field_validator("uri")
    @classmethod
    def _kept(cls, uri: str) -> str:
        if in_memory(uri):
            raise ValueError(f"{uri} {KEPT_NOTHING}")
        return uri


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
        if search.scheduler in ("asha", "hyperband") and search.asha.grace_period is None:
            search.asha.grace_period = max(1, int(full / search.asha.reduction_factor ** 2))
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
        message = f"unknown key {loc[-1]!r}{_suggest(str(loc[-1]), _keys_at(loc[:-1]))}"
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


def _suggest(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
