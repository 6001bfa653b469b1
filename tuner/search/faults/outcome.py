"""How a trial ended, read from Tune's trial and its last result: one status and a sentence."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.store.layout import COMPLETED, DIVERGED, FAILED, STOPPED

_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*:")
BUDGET_STOP = "stopped_by_study_budget"  # in a trial's last result: the study budget stopped it
SCHEDULER_NAMES = {"asha": "ASHA", "pasha": "PASHA", "hyperband": "HyperBand",
                   "median": "the median rule", "topk": "top-K", "pbt": "PBT",
                   "none": "the scheduler"}


@dataclass(frozen=True)
class Outcome:
    """A finished trial's status (completed, stopped, diverged, failed) and what happened."""

    status: str
    detail: str


def asha_rung(tokens: float, grace_period: int, reduction_factor: float) -> int:
    """The ASHA rung a trial reached: rung r sits at grace_period·reduction_factor^r tokens."""
    rung = 0
    while grace_period * reduction_factor ** (rung + 1) <= tokens:
        rung += 1
    return rung


def outcome(trial: Any, search: Any) -> Outcome:
    """Classify a trial Tune has finished (TERMINATED or ERROR) using its last reported result."""
    result = trial.last_result or {}
    tokens = int(result.get("tokens", 0))
    if trial.status == "ERROR":
        return Outcome(FAILED, f"failed: {tune_error(trial)}")
    if result.get("error"):
        return Outcome(FAILED, f"failed: {result['error']}")
    if result.get("diverged"):
        loss = result.get("train_loss", math.nan)
        return Outcome(DIVERGED, f"diverged at step {int(result.get('step', 0))} "
                                 f"(train_loss {loss:.4g}); val_loss recorded as inf")
    if tokens >= int(result.get("budget_tokens", 0)) > 0:
        return Outcome(COMPLETED, f"completed ({tokens:,} tokens)")
    if result.get(BUDGET_STOP):
        return Outcome(STOPPED, f"stopped by the study budget at {tokens:,} tokens")
    name = SCHEDULER_NAMES.get(search.scheduler, search.scheduler)
    if search.scheduler in ("asha", "pasha"):
        rung = asha_rung(tokens, search.asha.grace_period, search.asha.reduction_factor)
        return Outcome(STOPPED, f"stopped by {name} at rung {rung} ({tokens:,} tokens)")
    return Outcome(STOPPED, f"stopped by {name} at {tokens:,} tokens")


def ended(trial: Any) -> bool:
    """Whether Tune's record shows the trial ended (failed, diverged, trained its budget, or was
    stopped by its scheduler), not interrupted with its study: Tune marks both TERMINATED."""
    result = trial.last_result or {}
    if trial.status == "ERROR":
        return True
    return trial.status == "TERMINATED" and bool(
        result.get("error") or result.get("diverged") or result.get("done")
        or int(result.get("tokens", 0)) >= int(result.get("budget_tokens", 0)) > 0)


def tune_error(trial: Any) -> str:
    """What ended the last try of a trial whose process failed, from the error Tune recorded:
    the last lines of its traceback, or a sentence for a worker Ray's memory monitor killed."""
    path = getattr(trial, "error_file", None)
    if not path or not Path(path).is_file():
        return "the trial's process failed"
    last = Path(path).read_text(errors="replace").rpartition("Failure # ")[2]
    if "running low on memory" in last:
        return memory_kill(last)
    lines = [ln.strip() for ln in last.splitlines()[1:] if ln.strip()]  # under "Failure # N"
    if lines and _EXCEPTION_LINE.match(lines[-1]):  # a traceback's last line says it all
        return lines[-1][:1000]
    return " | ".join(lines[-3:])[-1000:] or "the trial's process failed"


def memory_kill(message: str) -> str:
    """Ray's page on a worker its memory monitor killed, as one sentence."""
    used = re.search(r"was ([\d.]+GB) used / ([\d.]+GB) limit", message)
    threshold = re.search(r"exceeded threshold of \d+B \(([\d.]+%)", message)
    return ("its worker was killed by Ray's memory monitor: the node's memory"
            + (f" reached {used[1]} of {used[2]}" if used else " ran low")
            + (f", over its threshold of {threshold[1]} (RAY_memory_usage_threshold)"
               if threshold else ""))
