"""The trainer's configuration: every hyperparameter defined once (name, symbol, default, range,
text).

`ModelConfig` holds the architecture, `TrainConfig` the training run. Each field is declared with
`hparam(...)`, whose metadata is the single source the tuner's search-space schema derives from.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import re
import reprlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import InitVar, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "adagrad", "lars")
SCHEDULES = ("cosine", "cosine_restarts", "step", "exponential", "plateau", "constant", "wsd")
FLOOR_SCHEDULES = ("cosine", "cosine_restarts", "plateau", "wsd")  # the schedules that use α_min
DECAY_SHAPES = ("1-sqrt", "linear")  # WSD's decay from α_max to α_min


class ConfigError(ValueError):
    """A configuration that cannot work; `field` names the offending field (or file)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class HParam:
    """One hyperparameter's definition: what it is called, its default, and its valid range."""

    name: str
    symbol: str
    default: Any
    kind: type
    description: str
    group: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low (else >= low)
    high_open: bool = True  # True: value must be < high (else <= high)
    choices: tuple[Any, ...] | None = None
    optional: bool = False  # None is a valid value (e.g. "off" or "derived")
    off: bool = False  # None turns it off (τ): written `off`, and so shown
    when: tuple[str, tuple[str, ...]] | None = None  # (field, values) for which this one is used
    aliases: tuple[str, ...] = ()
    log: bool = False  # a log scale is the natural way to search it

    def range_text(self) -> str:
        """The valid range in the notation of SYMBOLS.md, e.g. '[0, 1)' or '> 0'."""
        if self.choices is not None:
            return ", ".join(map(_yaml_text, self.choices))
        if self.kind is bool:
            return "true, false"
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"{left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            text = f"{'>' if self.low_open else '≥'} {_num(self.low)}"
            return text + (" (or off)" if self.off else "")
        return "any"

    def from_yaml(self, value: Any) -> Any:
        """`value` as YAML 1.1 gives it, with `off` (which it reads as false) as None where
        None is valid."""
        return None if value is False and self.optional and self.kind is not bool else value

    def check(self, value: Any) -> str | None:
        """Return why `value` is outside this parameter's valid range, or None if it is valid."""
        if value is None:
            return None if self.optional else "is required"
        if self.kind is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {shown(value)}"
        if self.choices is not None:  # of its type too: 1 is not true, 1.0 is not 1
            return None if any(value == c and type(value) is type(c) for c in self.choices) else (
                f"must be one of {self.range_text()}; got {shown(value)}")
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"must be a number, got {shown(value)}"
            if self.kind is int and isinstance(value, float) and not value.is_integer():
                return f"must be a whole number, got {shown(value)}"
            if isinstance(value, float) and not math.isfinite(value):
                return f"must be finite, got {shown(value)}"
            below = self.low is not None and (value <= self.low if self.low_open
                                              else value < self.low)
            above = self.high is not None and (value >= self.high if self.high_open
                                               else value > self.high)
            if below or above:
                bound = self.range_text()
                return f"must be {'' if bound[0] in '≥>' else 'in '}{bound}, got {shown(value)}"
            if self.kind is int and isinstance(value, float) and abs(value) > EXACT_FLOAT:
                return (f"must be written in digits, got {shown(value)}: a float holds whole "
                        f"numbers exactly only up to 2**53")
            return None
        if self.kind is str and not isinstance(value, str):
            return f"must be a string, got {shown(value)}"
        return None


def shown(value: Any, clean: Callable[[str], str] | None = None) -> str:
    """A value as a message quotes it: its repr, shortened (YAML aliases can nest a huge one),
    each string passed through `clean` before it is cut (a password must not survive a cut)."""
    return _Shortened(clean).repr(value)


class _Shortened(reprlib.Repr):
    def __init__(self, clean: Callable[[str], str] | None) -> None:
        super().__init__()
        self.clean = clean
        self.maxlevel, self.maxlist, self.maxdict = 2, 6, 6
        self.maxstring = self.maxother = self.maxlong = 80

    def repr_str(self, x: str, level: int) -> str:
        return super().repr_str(self.clean(x) if self.clean else x, level)


EXACT_FLOAT = 2**53  # the largest whole numbers a float holds exactly
BUDGET_MAX = 10**15  # tokens or steps: far beyond any run, and exact in any form


def _yaml_text(value: Any) -> str:
    """A value as YAML writes it (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def hparam(default: Any, symbol: str, description: str, *, group: str, kind: type | None = None,
           **spec: Any) -> Any:
    """Declare a dataclass field together with its hyperparameter definition."""
    meta = {"hparam": dict(symbol=symbol, default=default, description=description, group=group,
                           kind=kind or type(default), **spec)}
    return field(default=default, metadata=meta)


def runtime(default: Any, description: str, *, kind: type | None = None, **spec: Any) -> Any:
    """Declare a runtime field (it changes speed or output, not the maths) with its valid values."""
    meta = {"runtime": dict(symbol="", default=default, description=description, group="runtime",
                            kind=kind or type(default), **spec)}
    return field(default=default, metadata=meta)


def _definitions(cls: type, key: str = "hparam") -> dict[str, HParam]:
    return {f.name: HParam(name=f.name, **f.metadata[key])
            for f in dataclasses.fields(cls) if key in f.metadata}


@dataclass
class ModelConfig:
    """Architecture of the Transformer LM (fixed per study unless searched)."""

    # The upper bounds catch typos (a width of 3.2e9) before anything is allocated or started.
    vocab_size: int = hparam(10000, "|V|", "vocabulary size (token ids are < vocab_size)",
                             group="model", low=1, high=2**32, high_open=False)
    context_length: int = hparam(256, "T_ctx", "longest sequence the model reads (tokens)",
                                 group="model", low=1, high=2**20, high_open=False)
    d_model: int = hparam(512, "d_model", "width of the residual stream", group="model", low=1,
                          high=2**16, high_open=False)
    num_layers: int = hparam(4, "L", "number of Transformer blocks", group="model", low=1,
                             high=2**12, high_open=False)
    num_heads: int = hparam(16, "h", "attention heads (must divide d_model)", group="model", low=1)
    d_ff: int | None = hparam(None, "d_ff", "feed-forward width (default ≈ 8/3·d_model, a multiple "
                              "of 64)", group="model", kind=int, low=1, high=2**18,
                              high_open=False, optional=True)
    rope_theta: float = hparam(10000.0, "Θ", "RoPE base frequency", group="model", low=0.0,
                               low_open=True)
    norm: str = hparam("pre", "norm", "RMSNorm placement: before each sublayer (pre), after the "
                       "residual add (post), or none", group="model",
                       choices=("pre", "post", "none"))
    positions: str = hparam("rope", "pos", "positional encoding: rotary (rope) or none (NoPE)",
                            group="model", choices=("rope", "none"))
    ffn: str = hparam("swiglu", "ffn", "feed-forward: SwiGLU, or a SiLU MLP of matching size",
                      group="model", choices=("swiglu", "silu"))
    parametrization: str = hparam("sp", "param", "standard (sp), or maximal update (mup): the "
                                  "best α, β, λ then stay put as d_model grows from the base",
                                  group="model", choices=("sp", "mup"))
    mup_base_d_model: int | None = hparam(None, "d_base", "μP's base width, where μP is SP "
                                          "(default: d_model)", group="model", kind=int, low=1,
                                          high=2**16, high_open=False, optional=True,
                                          when=("parametrization", ("mup",)))
    mup_norm_gains: str = hparam("trainable", "g_norm", "μP's RMSNorm gains: trained (at α, as "
                                 "vectors), or frozen at 1", group="model",
                                 choices=("trainable", "frozen"),
                                 when=("parametrization", ("mup",)))

    def __post_init__(self) -> None:
        usable = isinstance(self.d_model, (int, float)) and math.isfinite(self.d_model)
        if self.d_ff is None and usable:  # otherwise validate() says what is wrong with d_model
            self.d_ff = default_d_ff(int(self.d_model))
        if self.parametrization == "mup" and self.mup_base_d_model is None and usable:
            # a number, not "this d_model": a config carried to another width keeps its base
            self.mup_base_d_model = int(self.d_model)

    def validate(self) -> None:
        """Raise ConfigError naming the first field that cannot work."""
        _check_fields(self, MODEL_HPARAMS, prefix="model.")
        if self.d_model % self.num_heads:
            raise ConfigError("model.num_heads", f"num_heads={self.num_heads} must divide "
                              f"d_model={self.d_model}")
        if self.positions == "rope" and (self.d_model // self.num_heads) % 2:
            raise ConfigError("model.num_heads", "RoPE needs an even head size "
                              f"(d_model/num_heads = {self.d_model // self.num_heads})")
        base = self.mup_base_d_model
        if self.parametrization == "mup" and base is not None and base % self.num_heads:
            raise ConfigError("model.mup_base_d_model", f"num_heads={self.num_heads} must divide "
                              f"the base width {base}, as it divides d_model")


def default_d_ff(d_model: int) -> int:
    """SwiGLU width ≈ 8/3·d_model rounded to the nearest multiple of 64 (at least 64)."""
    return max(64, int(round(8 * d_model / 3 / 64)) * 64)


def fraction_of(fraction: float, total: int) -> int:
    """⌊fraction·total⌋ of the fraction as written: 0.29 of 100 is 29 (the float product,
    28.99…, floors to 28)."""
    return math.floor(Fraction(repr(float(fraction))) * total)


@dataclass
class TrainConfig:
    """One training run of the trainer: data, model, hyperparameters, budget and runtime."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: str = field(default="", metadata={"doc": "prepared dataset folder (train.npy, "
                                             "valid.npy, meta.json, tokenizer)"})

    # Optimizer
    optimizer: str = hparam("adamw", "opt", "the update rule", group="optimizer",
                            choices=OPTIMIZERS)
    lr_max: float = hparam(1e-3, "α_max", "peak (base) step size: θ ← θ − α·update",
                           group="optimizer", low=0.0, low_open=True, aliases=("lr", "α"),
                           log=True)
    lr_min: float | None = hparam(None, "α_min", "floor of the schedule (default 0.1·α_max)",
                                  group="schedule", kind=float, low=0.0, optional=True, log=True,
                                  when=("schedule", FLOOR_SCHEDULES))
    beta1: float = hparam(0.9, "β1", "decay of the first-moment (momentum) average",
                          group="optimizer", low=0.0, high=1.0,
                          when=("optimizer", ("adamw", "adam")))
    beta2: float = hparam(0.999, "β2", "decay of the second-moment average (RMSProp's smoothing "
                          "constant)", group="optimizer", low=0.0, high=1.0,
                          when=("optimizer", ("adamw", "adam", "rmsprop")))
    eps: float = hparam(1e-8, "ε", "added to √v̂ in the denominator to avoid division by zero",
                        group="optimizer", low=0.0, low_open=True, log=True,
                        when=("optimizer", ("adamw", "adam", "rmsprop", "adagrad")))
    weight_decay: float = hparam(0.0, "λ", "weight decay (decoupled for AdamW; in LARS, added to "
                                 "the gradient before its trust ratio; L2 for the others)",
                                 group="optimizer", low=0.0)
    momentum: float = hparam(0.9, "γ_momentum", "SGD/LARS/RMSProp momentum: v ← γ·v + g",
                             group="optimizer", low=0.0, high=1.0,
                             when=("optimizer", ("sgd", "lars", "rmsprop")))
    lars_trust: float = hparam(0.001, "η_LARS", "LARS trust coefficient: local lr = η·‖θ‖/‖g‖ for "
                               "each matrix (not gains or biases)",
                               group="optimizer", low=0.0, low_open=True,
                               when=("optimizer", ("lars",)))
    decay_all: bool = hparam(False, "decay_all", "apply weight decay to norm gains and embeddings "
                             "too (default: matrices only)", group="optimizer")

    # Regularization
    dropout: float = hparam(0.0, "p_drop", "probability of zeroing an activation in training",
                            group="regularization", low=0.0, high=1.0)
    label_smoothing: float = hparam(0.0, "ε_ls", "target: 1 − ε_ls + ε_ls/|V| on the true token",
                                    group="regularization", low=0.0, high=1.0)
    grad_clip: float | None = hparam(1.0, "τ", "global L2 gradient clipping g ← g·min(1, τ/‖g‖); "
                                     "null = off", group="regularization", kind=float, low=0.0,
                                     low_open=True, optional=True, off=True)

    # Learning-rate schedule
    schedule: str = hparam("cosine", "sched", "the shape of the learning rate after warmup",
                           group="schedule", choices=SCHEDULES)
    warmup_iters: int = hparam(0, "T_warmup", "linear warmup steps from 0 to α_max",
                               group="schedule", low=0)
    cycle_iters: int | None = hparam(None, "T_cycle", "length of the cosine (of one restart "
                                     "cycle); default T_total", group="schedule", kind=int, low=1,
                                     optional=True,
                                     when=("schedule", ("cosine", "cosine_restarts")))
    cycle_mult: float = hparam(1.0, "T_mult", "growth of each restart cycle's length",
                               group="schedule", low=1.0, when=("schedule", ("cosine_restarts",)))
    step_size: int = hparam(1000, "T_step", "steps between decays of the step schedule",
                            group="schedule", low=1, when=("schedule", ("step",)))
    step_gamma: float = hparam(0.1, "γ_step", "factor per decay of the step schedule",
                               group="schedule", low=0.0, high=1.0, low_open=True,
                               high_open=False, when=("schedule", ("step",)))
    exp_rate: float = hparam(0.1, "r", "exponential schedule: α_t = α_0·r^(t/exp_steps)",
                             group="schedule", low=0.0, high=1.0, low_open=True, high_open=False,
                             when=("schedule", ("exponential",)))
    exp_steps: int | None = hparam(None, "T_exp", "exponential schedule's time constant (default "
                                   "T_total)", group="schedule", kind=int, low=1, optional=True,
                                   when=("schedule", ("exponential",)))
    plateau_factor: float = hparam(0.5, "f_plateau", "multiplier when validation loss stalls",
                                   group="schedule", low=0.0, high=1.0, low_open=True,
                                   when=("schedule", ("plateau",)))
    plateau_patience: int = hparam(2, "patience", "evaluations without improvement before a cut",
                                   group="schedule", low=0, when=("schedule", ("plateau",)))
    plateau_cooldown: int = hparam(0, "cooldown", "evaluations to wait after a cut",
                                   group="schedule", low=0, when=("schedule", ("plateau",)))
    decay_fraction: float = hparam(0.2, "f_decay", "WSD: the last fraction of T_total, "
                                   "T_decay = ⌊f_decay·T_total⌋ steps, decays α_max to α_min",
                                   group="schedule", low=0.0, high=1.0, low_open=True,
                                   when=("schedule", ("wsd",)))
    decay_shape: str = hparam("1-sqrt", "decay_shape", "WSD's decay: 1-sqrt, α = α_min + "
                              "(α_max − α_min)·(1 − √progress), or linear", group="schedule",
                              choices=DECAY_SHAPES, when=("schedule", ("wsd",)))

    # Training configuration and budget
    batch_size: int = hparam(32, "B", "sequences per update", group="training", low=1, high=2**20,
                             high_open=False)
    total_iters: int | None = hparam(None, "T_total", "number of updates (or set a token budget)",
                                     group="training", kind=int, low=1, high=BUDGET_MAX,
                                     high_open=False, optional=True)
    total_tokens: int | None = hparam(None, "N_tokens", "token budget; T_total = ⌈tokens / "
                                      "(B·context)⌉", group="training", kind=int, low=1,
                                      high=BUDGET_MAX, high_open=False, optional=True)
    eval_interval: int = hparam(100, "k_eval", "steps between validation evaluations",
                                group="training", low=1, high=BUDGET_MAX, high_open=False)
    eval_tokens: int | None = hparam(None, "k_eval_tok", "tokens between validation evaluations "
                                     "(instead of eval_interval): every batch size evaluates at "
                                     "the same token counts", group="training", kind=int, low=1,
                                     high=BUDGET_MAX, high_open=False, optional=True)
    eval_windows: int = hparam(64, "n_eval", "fixed validation windows scored at each evaluation",
                               group="training", low=1, high=2**20, high_open=False)
    noise_interval: int | None = hparam(
        100, "k_noise", "steps between measurements of the gradient noise scale B_simple: the "
        "first evaluation at or past each multiple measures it, and the last (one costs one or "
        "two steps); off: none", group="training", kind=int, low=1, high=BUDGET_MAX,
        high_open=False, optional=True, off=True)
    forks: int = hparam(0, "K_fork", "WSD cooldown forks: the runs of ⌊k·T_total/(K_fork+1)⌋ "
                        "steps, k = 1…K_fork, each trained from the main run's state at its "
                        "decay's start and scored at its end", group="training", low=0,
                        high=1024, high_open=False, when=("schedule", ("wsd",)))
    seed: int = hparam(0, "seed", "seeds every random source (init, batches, dropout)",
                       group="training", low=0, high=2**32 - 1, high_open=False)

    # Relative forms of lr_min and warmup_iters (RELATIVE_HPARAMS): resolved here, not stored
    lr_min_ratio: InitVar[float | None] = None
    warmup_fraction: InitVar[float | None] = None

    # Runtime (not searched; they change speed, not the maths)
    device: str = runtime("auto", "auto, cpu, cuda or cuda:N")
    fast: bool = runtime(True, "SDPA flash kernels, bf16 autocast and TF32 on CUDA, fused "
                         "optimizer steps")
    compile: bool | str = runtime("auto", "torch.compile the model: auto (on CUDA, not on the "
                                  "CPU, where compiling costs more than it saves), true or false",
                                  choices=("auto", True, False))
    deterministic: bool = runtime(False, "deterministic torch kernels")
    peak_flops: float | None = runtime(None, "device peak FLOP/s for MFU (None: the GPU's bf16 "
                                       "peak by name, for a fast run)",
                                       kind=float, low=0.0, low_open=True, optional=True)
    sample_prompt: str = runtime("Once upon a time", "generated from at evaluations (needs a "
                                 "tokenizer)")
    sample_tokens: int = runtime(32, "tokens generated per sample", low=0)

    def __post_init__(self, lr_min_ratio: float | None, warmup_fraction: float | None) -> None:
        if isinstance(self.model, dict):
            self.model = model_config_from_dict(self.model)
        if lr_min_ratio is not None:
            self._check_relative("lr_min", lr_min_ratio, uses=("lr_max",))
            self.lr_min = lr_min_ratio * self.lr_max
        if warmup_fraction is not None:
            self._check_relative("warmup_iters", warmup_fraction,
                                 uses=("batch_size", "total_iters", "total_tokens"))
            _check_fields(self.model, {"context_length": MODEL_HPARAMS["context_length"]}, "model.")
            self.warmup_iters = fraction_of(warmup_fraction, self.steps)

    def _check_relative(self, name: str, value: float, uses: tuple[str, ...]) -> None:
        """The relative form of `name` is in range, `name` itself is unset, and `uses` are valid."""
        spec = RELATIVE_HPARAMS[name]
        problem = spec.check(value)
        if problem:
            raise ConfigError(spec.name, f"{spec.symbol} {problem}")
        if getattr(self, name) != TRAIN_HPARAMS[name].default:
            raise _both_set(spec.name)
        _check_fields(self, {k: TRAIN_HPARAMS[k] for k in uses})

    @property
    def steps(self) -> int:
        """T_total: the number of optimizer steps of the full run."""
        if self.total_iters is not None:
            return int(self.total_iters)
        if self.total_tokens is None:
            raise ConfigError("total_iters", "set total_iters or total_tokens")
        return math.ceil(self.total_tokens / (self.batch_size * self.model.context_length))

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.model.context_length

    def epochs(self, train_tokens: int) -> int:
        """N_epoch: the passes over `train_tokens` that the full run makes, rounded up."""
        return math.ceil(self.steps * self.tokens_per_step / train_tokens)

    def evaluates_after(self, step: int) -> bool:
        """Whether step `step` (counted from 1) ends with a periodic evaluation: every eval_interval
        steps, or at the first step that reaches each multiple of eval_tokens (the last step
        always evaluates)."""
        if self.eval_tokens is None:
            return step % self.eval_interval == 0
        per_step = self.tokens_per_step
        return step * per_step // self.eval_tokens > (step - 1) * per_step // self.eval_tokens

    def measures_noise_after(self, step: int, evaluated_before: int) -> bool:
        """Whether the evaluation after step `step` measures the gradient noise scale: the last,
        and the first at or past each multiple of noise_interval (the one before came after
        step `evaluated_before`)."""
        every = self.noise_interval
        return every is not None and (step == self.steps
                                      or step // every > evaluated_before // every)

    @property
    def decay_start(self) -> int:
        """WSD's first decay step: T_total − ⌊f_decay·T_total⌋."""
        return self.steps - fraction_of(self.decay_fraction, self.steps)

    def fork_points(self) -> list[tuple[int, int]]:
        """(start, steps) of each WSD fork: the run of ⌊k·T_total/(K_fork+1)⌋ steps it stands
        for branches off the main run at that run's decay start, which the two share."""
        lengths = (k * self.steps // (self.forks + 1) for k in range(1, self.forks + 1))
        return [(length - fraction_of(self.decay_fraction, length), length) for length in lengths]

    @property
    def resolved_lr_min(self) -> float:
        default = RELATIVE_HPARAMS["lr_min"].default * self.lr_max
        return default if self.lr_min is None else self.lr_min

    def validate(self) -> None:
        """Raise ConfigError naming the first field that cannot work (data files are checked
        later)."""
        self.model.validate()
        _check_fields(self, TRAIN_HPARAMS)
        _check_fields(self, RUNTIME_FIELDS)
        if self.total_iters is None and self.total_tokens is None:
            raise ConfigError("total_iters", "set total_iters or total_tokens")
        if self.total_iters is not None and self.total_tokens is not None:
            raise ConfigError("total_iters", "set total_iters or total_tokens, not both")
        if self.resolved_lr_min > self.lr_max:
            raise ConfigError("lr_min", f"α_min={self.lr_min} must not exceed α_max={self.lr_max}")
        if self.warmup_iters >= self.steps:
            raise ConfigError("warmup_iters", f"T_warmup={self.warmup_iters} must be below "
                              f"T_total={self.steps}")
        if self.schedule == "wsd" and self.decay_start < self.warmup_iters:
            raise ConfigError("decay_fraction", f"WSD's decay starts at step {self.decay_start} "
                              f"(T_total − ⌊f_decay·T_total⌋), inside the warmup of "
                              f"T_warmup={self.warmup_iters} steps: lower f_decay or T_warmup")
        if self.forks:
            self._check_forks()
        if self.cycle_iters is not None and self.cycle_iters <= self.warmup_iters:
            raise ConfigError("cycle_iters", f"T_cycle={self.cycle_iters} must exceed "
                              f"T_warmup={self.warmup_iters}")
        if not self.data or not isinstance(self.data, str):
            raise ConfigError("data", "name a prepared dataset folder (a path)")
        if self.model.parametrization == "mup" and self.optimizer not in ("adamw", "adam"):
            raise ConfigError("model.parametrization", "mup scales each group's step size by "
                              f"the rules for Adam: use optimizer adamw or adam, not "
                              f"{self.optimizer}")

    def _check_forks(self) -> None:
        if self.schedule != "wsd":
            raise ConfigError("forks", f"K_fork={self.forks} needs schedule wsd (a fork is WSD's "
                              f"decay), not {self.schedule}")
        start, steps = self.fork_points()[0]
        if start < max(self.warmup_iters, 1) or start == steps:
            raise ConfigError("forks", f"K_fork={self.forks}: the shortest fork's run, of {steps} "
                              f"steps, would start its decay at step {start}, "
                              + ("and decay for no step" if start == steps else
                                 f"inside the warmup of T_warmup={self.warmup_iters} steps")
                              + ": fork fewer times or train longer")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form (the inverse of `train_config_from_dict`)."""
        return dataclasses.asdict(self)


MODEL_HPARAMS: dict[str, HParam] = _definitions(ModelConfig)
TRAIN_HPARAMS: dict[str, HParam] = _definitions(TrainConfig)
RUNTIME_FIELDS: dict[str, HParam] = _definitions(TrainConfig, "runtime")
HPARAMS: dict[str, HParam] = {**TRAIN_HPARAMS, **MODEL_HPARAMS}
"""Every hyperparameter the trainer defines, by readable name (the model's too)."""

RELATIVE_HPARAMS: dict[str, HParam] = {
    "lr_min": HParam(
        name="lr_min_ratio", symbol="α_min/α_max", default=0.1, kind=float, group="schedule",
        description="floor of the schedule as a fraction of α_max: α_min = ratio·α_max "
                    "(instead of lr_min)", low=0.0, high=1.0, high_open=False,
        when=("schedule", FLOOR_SCHEDULES)),
    "warmup_iters": HParam(
        name="warmup_fraction", symbol="T_warmup/T_total", default=0.0, kind=float,
        group="schedule", description="linear warmup as a fraction of T_total: T_warmup = "
        "⌊fraction·T_total⌋ (instead of warmup_iters)", low=0.0, high=1.0),
}
"""Relative forms a config may give instead of two parameters, by the parameter each one sets."""
RELATIVE_FORMS: dict[str, str] = {spec.name: name for name, spec in RELATIVE_HPARAMS.items()}
"""Each relative form (lr_min_ratio, warmup_fraction) → the parameter it sets."""
EPOCHS = HParam(name="epochs", symbol="N_epoch", default=None, kind=int, group="training",
                description="passes over the training tokens in the full run: ⌈T_total·B·context "
                "/ train tokens⌉ (reported, not set)", low=1, optional=True)
"""N_epoch, derived from the config and the dataset: `TrainConfig.epochs`."""


def _check_fields(obj: Any, defs: dict[str, HParam], prefix: str = "") -> None:
    for name, spec in defs.items():
        value = getattr(obj, name)
        problem = spec.check(value)
        if problem:
            raise ConfigError(prefix + name, f"{spec.symbol} {problem}".lstrip())
        if spec.kind is int and isinstance(value, float):  # 16.0 from JSON or a float range
            setattr(obj, name, int(value))


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "config", "must be a mapping")
    known = set(inspect.signature(cls).parameters)  # the fields and the relative forms
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{prefix}{key!r}", "a field name must be a string")
        if key not in known:
            raise ConfigError(prefix + key, _unknown_key(key, known, "field"))
    return cls(**data)


def _unknown_key(key: str, known: Iterable[str], what: str) -> str:
    """Why `key` is refused: the closest of the `known` keys, or all of them."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return (f"unknown {what} (did you mean {close[0]!r}?)" if close
            else f"unknown {what} (known: {', '.join(sorted(known))})")


def _both_set(form: str) -> ConfigError:
    return ConfigError(form, f"set {RELATIVE_FORMS[form]} or {form}, not both")


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Build a ModelConfig, rejecting unknown keys."""
    return _from_dict(ModelConfig, data, "model.")


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from a plain mapping (nested `model`), rejecting unknown keys."""
    data = {key: TRAIN_HPARAMS[key].from_yaml(value) if key in TRAIN_HPARAMS else value
            for key, value in data.items()}
    for form, name in RELATIVE_FORMS.items():  # given at its default, the parameter is still given
        if form in data and name in data:
            raise _both_set(form)
    model = model_config_from_dict(data.pop("model", {}) or {})
    return _from_dict(TrainConfig, {**data, "model": model}, "")


STUDY_BUDGET_KEYS = {"tokens": "total_tokens", "total_iters": "total_iters",
                     "eval_interval": "eval_interval", "eval_tokens": "eval_tokens",
                     "eval_windows": "eval_windows", "seed": "seed", "forks": "forks",
                     "noise_interval": "noise_interval"}
"""A study file's `budget` keys and the trainer fields they set."""
STUDY_RESOURCE_KEYS = ("device", "deterministic", "peak_flops", "compile")
"""A study file's `resources` keys that are trainer fields of the same name (the rest are Ray's)."""


def fixed_study_to_config(study: dict[str, Any]) -> dict[str, Any]:
    """A study file whose values are all fixed (`tuner best --export`) as a trainer config
    mapping."""
    specs = {**TRAIN_HPARAMS, **{spec.name: spec for spec in RELATIVE_HPARAMS.values()}}
    by_key = {key: name for name, spec in specs.items() if name not in STUDY_BUDGET_KEYS.values()
              for key in (name, spec.symbol, *spec.aliases)}
    sections = {}
    for section in ("model", "hparams", "data", "budget", "resources"):
        sections[section] = study.get(section) or {}
        if not isinstance(sections[section], dict):
            raise ConfigError(section, "must be a mapping")
    flat: dict[str, Any] = {"model": sections["model"]}
    given: dict[str, Any] = {}  # readable name -> the key that gave it
    for key, value in sections["hparams"].items():
        if isinstance(value, dict):
            raise ConfigError(f"hparams.{key}", "is a distribution; the trainer needs one value "
                              "(run the study with `tuner search`)")
        name = by_key.get(key)
        if name is None:
            raise ConfigError(f"hparams.{key}", _unknown_key(str(key), by_key, "hyperparameter"))
        if name in given:
            raise ConfigError(f"hparams.{key}", f"{name} is given twice (also as {given[name]})")
        given[name], flat[name] = key, value
    path = sections["data"].get("path")
    if not path:
        raise ConfigError("data.path", "the trainer needs a prepared dataset folder")
    flat["data"] = path
    for key, value in sections["budget"].items():
        if key not in STUDY_BUDGET_KEYS:
            raise ConfigError(f"budget.{key}", _unknown_key(str(key), STUDY_BUDGET_KEYS, "key"))
        flat[STUDY_BUDGET_KEYS[key]] = value
    resources = sections["resources"]
    flat.update({key: resources[key] for key in STUDY_RESOURCE_KEYS if key in resources})
    return flat


def _unique(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A mapping from key-value pairs, refusing a key given twice (it would silently win)."""
    out: dict[Any, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"{key!r} is given twice")
        out[key] = value
    return out


def duplicate_keys(node: Any, path: str = "", walked: set[int] | None = None
                   ) -> Iterator[tuple[str, int, int]]:
    """(dotted key, its line, the line it was first given on) for each key that a mapping of
    the YAML tree `node` (from yaml.compose) gives twice: yaml.safe_load keeps the last."""
    import yaml

    walked = set() if walked is None else walked
    if id(node) in walked:  # an alias: walking it again at every use can take for ever
        return
    walked.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, child in node.value:
            here = f"{path}.{key.value}".lstrip(".")
            if key.value in seen:
                yield here, key.start_mark.line + 1, seen[key.value]
            seen.setdefault(key.value, key.start_mark.line + 1)
            yield from duplicate_keys(child, here, walked)
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            yield from duplicate_keys(child, f"{path}[{i}]", walked)


def _load_yaml(text: str) -> Any:
    """parse_yaml's data, refusing a key given twice in a mapping."""
    root, data = parse_yaml(text)
    twice = next(duplicate_keys(root), None)
    if twice is not None:
        key, line, first = twice
        raise ValueError(f"{key!r} is given twice (lines {first} and {line})")
    return data


_EXPONENT = re.compile(r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")  # YAML 1.1 octal: 010 is 8
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")  # 1:30 is 90


def parse_yaml(text: str) -> tuple[Any, Any]:
    """The node tree of `text` (lines, keys given twice) and its data as yaml.safe_load builds it,
    but with plain numbers read as YAML 1.2 does, not PyYAML's YAML 1.1: 3e-4 and 1e5 are
    numbers (1.1 wants a dot and a signed exponent), 010 is 10 (1.1: octal 8), 1:30 is text (1.1:
    base 60, 90). Quoted, each stays text."""
    import yaml  # only needed for YAML files

    loader = yaml.SafeLoader(text)  # what yaml.safe_load runs, with the tree kept
    try:
        root = loader.get_single_node()
        stack, seen = [root], set()
        while stack:  # each node once: an alias is the node it names
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.MappingNode):
                stack.extend(child for pair in node.value for child in pair)
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)
            elif node.style is None and isinstance(node, yaml.ScalarNode):
                _read_as_yaml_1_2(node)
        return root, None if root is None else loader.construct_document(root)
    finally:
        loader.dispose()


_INT, _FLOAT, _STR = (f"tag:yaml.org,2002:{kind}" for kind in ("int", "float", "str"))


def _read_as_yaml_1_2(node: Any) -> None:
    """Retag or rewrite a plain scalar that YAML 1.1 resolves otherwise than YAML 1.2."""
    if node.tag == _STR and _EXPONENT.fullmatch(node.value):
        node.tag = _FLOAT
    elif node.tag in (_INT, _FLOAT) and _SEXAGESIMAL.fullmatch(node.value):
        node.tag = _STR
    elif node.tag in (_INT, _STR) and _LEADING_ZERO.fullmatch(node.value):  # 1.1: 08 is text
        node.tag, node.value = _INT, str(int(node.value.replace("_", "")))


def _parse_failure(err: Exception) -> str:
    """A parse error in one line: PyYAML's spans several, quoting the text."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(err).split())


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a YAML or JSON trainer config, or a fixed study file; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(str(path), f"cannot read config file ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), f"not UTF-8 text (byte {err.start})") from None
    try:
        data = json.loads(text, object_pairs_hook=_unique) if path.suffix == ".json" else (
            _load_yaml(text))
    except Exception as err:  # noqa: BLE001 - any parse error is the file's fault
        raise ConfigError(str(path), f"not valid {path.suffix.lstrip('.') or 'YAML'}: "
                          f"{_parse_failure(err)}") from err
    data = {} if data is None else data  # an empty file: every field at its default
    if not isinstance(data, dict):
        raise ConfigError(str(path), f"must be a mapping of fields, not a {type(data).__name__}")
    if "hparams" in data or "budget" in data:
        data = fixed_study_to_config(data)
    return train_config_from_dict(data)
