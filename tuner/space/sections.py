"""The sections of a study file as pydantic models: data, model, hparams, budget, search,
resources, tracking; and `StudySections`, a study as the checks and the conversions read it.

The model, hparams and budget sections are generated from the trainer's `HParam` definitions.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import Field, create_model, field_validator, model_validator

from model.config import HParam
from tuner.space.params import (
    ALL_DEFS,
    BUDGET_DEFS,
    HPARAM_DEFS,
    MODEL_DEFS,
    Section,
    section_aliases,
    section_fields,
)
from tuner.store.redact import remember
from tuner.store.uri import KEPT_NOTHING, in_memory


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


class TopkSettings(Section):
    """The one-epoch top-K baseline: every trial trains `budget` tokens, the K best go on."""

    budget: int | None = Field(None, ge=1, description="tokens every trial trains before the top "
                               "k go on (default: a full trial / 9)")
    k: int | None = Field(None, ge=1, description="how many of the trials recorded at the budget "
                          "so far a trial must be among to go on (default: num_samples / 9, "
                          "rounded up)")


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
            raise ValueError(f"unknown parameter {unknown[0]!r}{suggest(unknown[0], keys)}")
        return [keys[n] for n in names]


class ConfirmSettings(Section):
    """Seed-checked winners: the top trials trained again with other seeds once the study ends."""

    top: int = Field(3, ge=1, description="how many of the best completed trials to train again")
    seeds: int = Field(3, ge=1, le=100, description="further seeds each (the study's budget.seed "
                       "+ 1 … + seeds)")


class FlatSettings(Section):
    """Stop when flat: end the study once its best val_loss stopped improving."""

    trials: int = Field(ge=1, description="stop once the best val_loss improved by no more than "
                        "the margin over the last this many finished trials")
    margin: float | str = Field(0.0, description="an improvement of at most this much counts as "
                                "none; `noise`: the seed sd of the study's best, measured by a "
                                "seed check (docs/study-file.md#stop-when-flat)")

    @field_validator("margin", mode="before")
    @classmethod
    def _margin(cls, value: Any) -> Any:
        if value == "noise" or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                and 0 <= value < math.inf):
            return value
        raise ValueError(f"must be a number ≥ 0 or noise, got {value!r}")


class StudyBudget(Section):
    """A study budget in compute: the study ends once its trials trained this many tokens."""

    full_trials: float | None = Field(None, gt=0, allow_inf_nan=False, description="the tokens "
                                      "of this many full trials (may be fractional)")
    tokens: int | None = Field(None, ge=1, description="this many tokens")

    @model_validator(mode="after")
    def _exactly_one(self) -> StudyBudget:
        if (self.full_trials is None) == (self.tokens is None):
            raise ValueError("give exactly one of full_trials or tokens")
        return self


class SearchSection(Section):
    """How trials are proposed (Optuna sampler) and stopped early (Ray Tune scheduler)."""

    algorithm: Literal["tpe", "bohb", "random", "grid", "cmaes", "gp", "qmc"] = Field(
        "random", description="Optuna sampler: random, TPE, BOHB's TPE on the scheduler's rungs, "
        "grid (enumerates the {grid: [...]} values), CMA-ES, Gaussian process, or quasi-Monte "
        "Carlo (random: chosen on the table of learning curves, docs/benchmarks.md)")
    scheduler: Literal["asha", "pasha", "hyperband", "median", "topk", "pbt", "none"] = Field(
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
                                       "10); for bohb, the trials a rung needs before it is "
                                       "modelled (default: the searched parameters + 1)")
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
    start_near: int | None = Field(None, ge=1, description="with warm_start: the first this many "
                                   "trials are the earlier study's best configuration and draws "
                                   "around it (default: none, the searcher's own)")
    confirm: ConfirmSettings | None = Field(None, description="train the top trials again with "
                                            "other seeds once the study ends (default: off)")
    stop_when_flat: FlatSettings | None = Field(None, description="end the study once its best "
                                                "val_loss is flat (default: off)")
    study_budget: StudyBudget | None = Field(None, description="end the study once its trials "
                                             "trained this many tokens, in full trials or "
                                             "tokens; num_samples stays an upper bound "
                                             "(docs/study-file.md#study-budget; default: off)")
    asha: AshaSettings = Field(default_factory=AshaSettings, description="settings of the asha, "
                               "pasha and hyperband schedulers")
    median: MedianSettings = Field(default_factory=MedianSettings, description="settings of the "
                                   "median scheduler")
    topk: TopkSettings = Field(default_factory=TopkSettings, description="settings of the topk "
                               "scheduler")
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
    system_metrics_s: float = Field(
        30.0, ge=0, description="seconds between the samples of MLflow's system metrics (CPU, "
        "memory, disk, network, GPU) of a trial's node, logged to its run; 0: none")

    _remembered = field_validator("uri", mode="before")(_remembered_uri)

    @field_validator("uri")
    @classmethod
    def _kept(cls, uri: str) -> str:
        if in_memory(uri):
            raise ValueError(f"{uri} {KEPT_NOTHING}")
        return uri


class StudySections(Protocol):
    """A study's name and sections: what `checks` and `convert` read of a `schema.Study`."""

    name: str
    data: DataSection
    model: Any  # a ModelSection
    hparams: Any  # an HParamsSection
    budget: Any  # a BudgetSection
    search: SearchSection
    resources: ResourcesSection
    tracking: TrackingSection


def suggest(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
