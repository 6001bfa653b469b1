"""The probe of a study: its trainer config (the study's model at its smallest batch size, μP's
base width), the sweep (`model.lr_probe`) run in this process, the batch advice of a short run at
the suggested α (`tuner.probe.batch`), its figure and MLflow run, and with `write` the α_max range
and B's choices set in the study file."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config import TrainConfig
from model.lr_probe import END_LR, NOISE_STEPS, START_LR, STEPS, ProbeCurve, ProbeRange, lr_probe
from tuner.errors import UserError
from tuner.probe.batch import BatchAdvice
from tuner.space.distributions import Distribution, IntRange, LogUniform, Uniform

PLACEHOLDER = "{loguniform: [1.0e-4, 1.0e-2]}"  # what a dry run of --write sets
PLACEHOLDER_B = "{choice: [8, 16]}"
MOST_STEPS = 10_000  # a sweep's steps at most: 30 times the most usual


@dataclass
class ProbeResult:
    """A probe's outcome: the range (None, and `found.problem`, when the curve gives none)."""

    study: str
    config: TrainConfig
    curve: ProbeCurve
    found: ProbeRange
    run_id: str
    tracking_uri: str
    png: Path
    study_tokens: int  # the study's budget: its trials, each trained in full
    lo: float | None = None  # the range as printed and written: rounded outwards
    hi: float | None = None
    written: Path | None = None  # the study file, when --write set the range in it
    batch: BatchAdvice | None = None  # the batch advice, where a range was found and it ran
    batch_unwritten: str = ""  # why --write set α's range but not B's suggested choices


def rounded(value: float, up: bool) -> float:
    """`value` to two significant digits, rounded outwards (the range only widens)."""
    step = 10.0 ** (math.floor(math.log10(value)) - 1)
    digits = (math.ceil if up else math.floor)(round(value / step, 9))
    return float(f"{digits * step:.2g}")


def range_yaml(lo: float, hi: float) -> str:
    """The range as a study file's flow value."""
    return f"{{loguniform: [{lo:.2g}, {hi:.2g}]}}"


def probe(space: Path, *, start: float = START_LR, end: float = END_LR, steps: int = STEPS,
          noise_steps: int = NOISE_STEPS, write: bool = False, out: Path | None = None,
          tracking_uri: str | None = None,
          warn: Callable[[str], None] | None = None) -> ProbeResult:
    """Run the α range test of the study file `space`, then (`noise_steps` > 0, a range found)
    measure B_simple along a run of `noise_steps` at the range's middle, and record both in the
    study's tracking store; with `write`, set α_max's range and B's choices in the file.
    UserError (nothing run or written) on bad input, a file `write` cannot edit or replace
    included; `warn` (default: a Python warning) is told, before it trains, when the probe will
    train more tokens than the study's trials."""
    from model.lr_probe import suggest_range
    from model.train import device_label, resolve_device
    from tuner.probe.batch import advise, choice_yaml
    from tuner.probe.plot import probe_figure
    from tuner.probe.record import PROBE_PNG, log_probe, probe_ended, start_probe
    from tuner.search.record.provenance import dataset_sha256, git_commit
    from tuner.search.trial.trainable import trial_threads
    from tuner.space import load_study
    from tuner.space.dataset_fit import study_dataset
    from tuner.space.edit import check_replaceable, set_hparam, write_checked
    from tuner.store.layout import DATASET_TAG, DEVICE_TAG

    for option, value in (("--start", start), ("--end", end)):
        if not math.isfinite(value):
            raise UserError(f"{option} {value}: must be a finite number")
    if not 0 < start < end:
        raise UserError(f"--start {start} and --end {end}: the sweep's α must grow from above 0")
    if not 10 <= steps <= MOST_STEPS:
        raise UserError(f"--steps {steps}: a sweep takes 10 to {MOST_STEPS:,} steps (100–300 is "
                        "usual)")
    if noise_steps and not 10 <= noise_steps <= MOST_STEPS:
        raise UserError(f"--noise-steps {noise_steps}: 0 (no batch advice), or 10 to "
                        f"{MOST_STEPS:,}")
    study = load_study(space)
    text = study.source_text or ""
    if write:  # refused now, before anything runs
        placed = set_hparam(space, text, "lr_max", PLACEHOLDER)
        if noise_steps:
            set_hparam(space, placed, "batch_size", PLACEHOLDER_B)
        check_replaceable(space)
    data_dir, _ = study_dataset(study)
    config = probe_config(study, data_dir)
    client, uri, experiment = _store(study, tracking_uri)
    where = out or Path("reports") / "probe" / study.name
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {where}: cannot be made a folder ({err.strerror or err})") from None
    study_tokens = study.trial_count * study.full_trial_tokens()
    planned = (steps + noise_steps) * config.batch_size * config.model.context_length
    if planned > study_tokens:
        (warn or _warn)(f"the probe will train up to {planned:,} tokens, {planned / study_tokens:.0%}"
                        f" of the study's own {study_tokens:,} (its {study.trial_count} trials in "
                        "full): fewer --steps or --noise-steps train less")
    tags = {DATASET_TAG: dataset_sha256(data_dir), DEVICE_TAG: device_label(
        resolve_device(config.device)), "tuner.git_commit": git_commit(),
        "tuner.seed": str(config.seed), "tuner.threads": str(trial_threads(study))}
    run_id = start_probe(client, experiment, study.name, tags)  # a read-only store fails here
    with probe_ended(client, run_id):
        with _threads(trial_threads(study)):
            curve = lr_probe(config, start, end, steps)
        found = suggest_range(curve)
        shown = None if found.lo is None else (rounded(found.lo, up=False),
                                               rounded(found.hi, up=True))
        batch = None
        if shown is not None and noise_steps:
            with _threads(trial_threads(study)):
                batch = advise(study, config, math.sqrt(shown[0] * shown[1]), noise_steps,
                               _cpus())
        png = where / PROBE_PNG
        probe_figure(curve, found, shown, f"α range test of {study.name}: B {config.batch_size}, "
                     f"d_model {config.model.d_model}").savefig(png, dpi=110)
        sweep = {"start_lr": start, "end_lr": end, "steps": steps, "noise_steps": noise_steps}
        log_probe(client, run_id, study.name, config, sweep, curve, found, shown, png, batch)
        result = ProbeResult(study.name, config, curve, found, run_id, uri, png, study_tokens,
                             *(shown or (None, None)), batch=batch)
        if write and result.lo is not None:
            edited = set_hparam(space, text, "lr_max", range_yaml(result.lo, result.hi))
            if batch is not None and batch.suggested:
                try:  # B's choices may not fit the rest of the study: then α's range alone
                    write_checked(space, set_hparam(space, edited, "batch_size",
                                                    choice_yaml(batch.suggested)), study)
                    result.written = space
                    return result
                except UserError as err:  # the file is written next: not "left as it was"
                    result.batch_unwritten = str(err).removesuffix("; it was left as it was")
            write_checked(space, edited, study)
            result.written = space
    return result


def _warn(text: str) -> None:
    warnings.warn(text, stacklevel=3)


def _store(study: Any, tracking_uri: str | None) -> tuple[Any, str, str]:
    """The study's tracking store, as `tuner search` picks it (the option, else the file's, else
    MLFLOW_TRACKING_URI, else the default): its client, URI and the study's experiment id."""
    from tuner.store.connect import connect
    from tuner.store.runs import experiment_id
    from tuner.store.uri import absolute_uri

    uri = tracking_uri or study.tracking.uri
    if tracking_uri is None and "uri" not in study.tracking.model_fields_set:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or uri
    uri = absolute_uri(uri)
    client = connect(uri)
    return client, uri, experiment_id(client, study.tracking.experiment)


@contextlib.contextmanager
def _threads(threads: int) -> Iterator[None]:
    """Train with `threads` torch threads, as a trial of the study (the same losses on a CPU); a
    ConfigError of the probe's config is the user's."""
    import torch

    from model.config import ConfigError

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    except ConfigError as err:
        raise UserError(f"the probe's config is invalid: {err}") from None
    finally:
        torch.set_num_threads(before)


def _cpus() -> float:
    """This machine's CPUs as Ray counts them (a container's limit included)."""
    from ray._private.utils import get_num_cpus

    return float(get_num_cpus())


def probe_config(study: Any, data_dir: Path) -> TrainConfig:
    """The trainer config the probe sweeps: the study's constants, each other searched value at
    its middle (`middle`) but B at its smallest (the noisiest gradients diverge first, so the
    range holds for the larger B too, and the sweep costs least); under μP at the base width."""
    params = {name: middle(dist) for name, dist in study.searched().items()}  # α_max's unused
    if "batch_size" in params:
        params["batch_size"] = int(study.searched()["batch_size"].span()[0])
    config = study.trial_config(params, data_dir)
    model = config.model
    if model.parametrization == "mup" and model.mup_base_d_model != model.d_model:
        d_ff = model.d_ff if "d_ff" in study.model.given() else None  # else the base's default
        config.model = dataclasses.replace(model, d_model=model.mup_base_d_model, d_ff=d_ff)
        config.validate()
    return config


def middle(dist: Distribution) -> Any:
    """A distribution's middle value: the geometric mean of a log range, the mean of a uniform
    one, the median of numeric options (the lower of two), the first option of others."""
    if isinstance(dist, LogUniform) or (isinstance(dist, IntRange) and dist.log):
        value = math.sqrt(dist.lo * dist.hi)
    elif isinstance(dist, (Uniform, IntRange)):
        value = (dist.lo + dist.hi) / 2
    else:
        options = dist.options()
        numeric = all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in options)
        return statistics.median_low(options) if numeric else options[0]
    if isinstance(dist, IntRange):  # on its grid of steps
        return dist.lo + round((value - dist.lo) / dist.step) * dist.step
    return value
