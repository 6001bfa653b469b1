"""How short a study's trial may be: the steps its schedule needs, which `tuner space validate` and
`tuner search` check at the study's largest B and context (after the memory check, which speaks
first for a B too large to fit) and the probe's batch advice keeps to."""

from __future__ import annotations

import math
from typing import Any

from tuner.errors import UserError

# "A few steps": the fewest in which a tenth of the trial is a whole step. Below it the usual
# warmup of 10% (warmup_fraction 0.1) warms up for no step, and ASHA's first rung at 10% of the
# budget (grace_period, the quickstart's) comes before the first step ends.
MIN_STEPS = 10


def trial_steps(budget: Any, batch: int, context: int) -> tuple[int, int]:
    """A full trial's steps and tokens at B `batch` and context `context`, under a study's
    `budget` section (tokens, or total_iters)."""
    per_step = batch * context
    if budget.total_iters is not None:
        return budget.total_iters, budget.total_iters * per_step
    return math.ceil(budget.tokens / per_step), budget.tokens


def steps_needed(budget: Any, tokens: int) -> int:
    """The steps a trial of `tokens` needs: MIN_STEPS, and one step for each of its evaluations
    (every eval_tokens; two in one step would be one, and a scheduler's rungs, which wait on
    evaluations, would fall together)."""
    evaluations = tokens // budget.eval_tokens if budget.eval_tokens is not None else 0
    return max(MIN_STEPS, evaluations)


def too_short(budget: Any, batch: int, context: int) -> str | None:
    """Why a trial at B `batch` and context `context` is too short for its schedule (None: it
    is not)."""
    steps, tokens = trial_steps(budget, batch, context)
    needed = steps_needed(budget, tokens)
    if steps >= needed:
        return None
    why = (f"{tokens // budget.eval_tokens} evaluations (every {budget.eval_tokens:,} tokens) "
           "need a step each" if needed > MIN_STEPS else
           f"a trial needs {MIN_STEPS} at least (a warmup or first rung of 10% is a step)")
    return (f"at B {batch} and context {context} a trial of {tokens:,} tokens is "
            f"{steps} step{'s' if steps != 1 else ''} ({batch * context:,} tokens a step), "
            f"and {why}")



def check_trial_length(study: Any) -> None:
    """UserError when a trial at the study's largest B and context is too short for its schedule:
    it names the searched B where a smaller one would do, else the budget."""
    from tuner.space.convert import span

    (b_lo, b_hi), (_, c_hi) = span(study, "batch_size"), span(study, "context_length")
    problem = too_short(study.budget, int(b_hi), int(c_hi))
    if problem is None:
        return
    if b_lo < b_hi and too_short(study.budget, int(b_lo), int(c_hi)) is None:
        raise UserError(f"hparams.batch_size: B can be {int(b_hi)}: {problem}; search smaller "
                        "B's, or train longer")
    key = "tokens" if study.budget.tokens is not None else "total_iters"
    raise UserError(f"budget.{key}: {problem}: train longer, or use a smaller B")
