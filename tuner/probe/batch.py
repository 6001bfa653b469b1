"""The probe's batch advice: the gradient noise scale B_simple (`model.noise_scale`) measured along
a short run at the suggested α, and the batch sizes around it that fit in a trial's memory and
leave the study's trials the steps their schedule needs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from model.config import TrainConfig

MEASUREMENTS = 10  # its evaluations, each measuring B_simple
WARMUP = 0.1  # the fraction of its steps that warms α up to the suggested one
# The suggested B's: the powers of two from B_simple/4 (a quarter more tokens than the fewest,
# McCandlish et al.'s E = E_min·(1 + B/B_simple)) to 2·B_simple (twice the tokens, 1.5× the
# fewest steps); B_simple grows as the loss falls, beyond the short run's
LOW, HIGH = 0.25, 2.0
OPTIMISES = ("the advice optimises time, not tokens: its B's train in 1.5–5× the fewest steps on "
             "1.25–3× the fewest tokens; at a study's equal tokens a smaller B often ends lower")


@dataclass
class BatchAdvice:
    """The run's B_simple (in sequences) at each of its measurements, and what it suggests."""

    lr: float  # the run's α
    batch_size: int  # the B it trained
    context: int  # tokens per sequence
    points: list[tuple[int, float]]  # (step, B_simple) at each measurement
    tokens: int  # what it trained
    diverged: bool
    largest: int | None  # the largest power-of-two B that fits a trial here (None: not B = 1)
    memory: str  # where a trial's memory comes from
    suggested: list[int]  # the B's to search; empty when the run gives none (see `problem`)
    study: list[int]  # the study's B's: its options, or its one value
    too_few_steps: list[int] = dataclasses.field(default_factory=list)  # B's left out: at
    # these the study's trials would be shorter than their schedule needs (`long_enough`)
    steps_problem: str = ""  # why none of the B's around B_simple is kept, where none is

    @property
    def noise_scale(self) -> float | None:
        """B_simple at the run's end."""
        return self.points[-1][1] if self.points else None

    @property
    def problem(self) -> str:
        """Why there is no suggestion ("" when there is one)."""
        if self.diverged:
            return f"the run at α {self.lr:.2g} diverged"
        if self.noise_scale is None:
            return f"nothing was measured (B {self.batch_size} cannot be split in two)"
        if math.isinf(self.noise_scale):
            return (f"the gradient noise hid |G|² at B {self.batch_size}: B_simple is far above "
                    "it; run longer (--noise-steps) or start from a larger B")
        if self.largest is None:
            return f"not even B = 1 fits a trial's memory ({self.memory})"
        return self.steps_problem


def noise_config(config: TrainConfig, lr: float, steps: int) -> TrainConfig:
    """`config` as the short run trains it: α constant at `lr` after a warmup over WARMUP of its
    `steps`, B_simple measured at each of its MEASUREMENTS evaluations."""
    return dataclasses.replace(
        config, lr_max=lr, lr_min=None, schedule="constant", warmup_iters=int(WARMUP * steps),
        total_iters=steps, total_tokens=None, eval_interval=max(1, steps // MEASUREMENTS),
        eval_tokens=None, noise_interval=1, sample_tokens=0, forks=0)


def measure(config: TrainConfig, lr: float, steps: int) -> tuple[list[tuple[int, float]], int,
                                                                    bool]:
    """Train the short run: B_simple at each measurement, the tokens it trained, whether it
    diverged."""
    from model.train import train

    result = train(noise_config(config, lr, steps))
    points = [(r.step, r.noise_scale) for r in result.records if r.noise_scale is not None]
    return points, result.tokens, result.status == "diverged"


def suggest(noise: float, largest: int) -> list[int]:
    """The powers of two from LOW to HIGH times B_simple, those up to `largest` (that one alone
    where none is)."""
    low, high = max(1.0, LOW * noise), max(1.0, HIGH * noise)
    powers = [2**k for k in range(math.ceil(math.log2(low)), math.floor(math.log2(high)) + 1)]
    return [b for b in powers if b <= largest] or [largest]


def study_batches(study: Any, config: TrainConfig) -> list[int]:
    """The study's B's: its searched options (a range's ends), or its one value (`config`'s)."""
    searched = study.searched().get("batch_size")
    if searched is None:
        return [config.batch_size]
    options = searched.options()
    return sorted(int(b) for b in (options if options is not None else searched.span()))


def advise(study: Any, config: TrainConfig, lr: float, steps: int, cpus: float) -> BatchAdvice:
    """Measure B_simple along the short run of `config` at `lr` and suggest the B's around it
    that fit a trial of `study` on `cpus` CPUs here."""
    from tuner.search.faults.memory_fit import largest_batch

    points, tokens, diverged = measure(config, lr, steps)
    largest, memory = largest_batch(study, cpus)
    advice = BatchAdvice(lr, config.batch_size, config.model.context_length, points, tokens,
                         diverged, largest, memory, [], study_batches(study, config))
    if not advice.problem:
        around = suggest(advice.noise_scale, largest)
        advice.suggested, advice.steps_problem = long_enough(study, around)
        advice.too_few_steps = [b for b in around if b not in advice.suggested]
    return advice


def long_enough(study: Any, batches: list[int]) -> tuple[list[int], str]:
    """Those of `batches` at which a trial of `study`, at its largest context, lasts the steps
    its schedule needs (`tuner.space.trial_length`); where none does, why, and the B's that
    would."""
    from tuner.space.convert import span
    from tuner.space.trial_length import too_short

    context = int(span(study, "context_length")[1])
    kept = [b for b in batches if too_short(study.budget, b, context) is None]
    if kept:
        return kept, ""
    fits = [2**k for k in range(21) if too_short(study.budget, 2**k, context) is None]
    smaller = f", or search B up to {fits[-1]}, below the range" if fits else ""
    return [], (f"none of the B's around B_simple ({', '.join(map(str, batches))}) leaves the "
                f"study's trials the steps they need: {too_short(study.budget, batches[0], context)}"
                f"; train more tokens{smaller}")


def choice_yaml(batches: list[int]) -> str:
    """The suggested B's as a study file's flow value."""
    return f"{{choice: [{', '.join(map(str, batches))}]}}"
