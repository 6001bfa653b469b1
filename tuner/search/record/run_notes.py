"""What a study writes for people to read on its runs: their descriptions (MLflow's
`mlflow.note.content`, Markdown, the top of a run's page in MLflow's UI) and a trial's text
sample. A trial's says its outcome and searched values; the study's, which trial won, by how
much, and on which values."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from tuner.space.params import shown_value, symbol
from tuner.store.rows import TrialRow
from tuner.store.transfer import Transfer


def _value_lines(values: Mapping[str, Any], others: Mapping[str, Any] | None = None) -> list[str]:
    """One Markdown list item per searched value, by name, `others`' beside it in brackets."""
    return [f"- `{name}` ({symbol(name)}) = {shown_value(name, value)}"
            + (f" ({shown_value(name, others.get(name, '–'))})" if others is not None else "")
            for name, value in sorted(values.items())]


def trial_note(values: Mapping[str, Any], outcome: str, best: float) -> str:
    """A trial run's description: its outcome (the first line of a failure's), best val_loss and
    the values searched for it."""
    first = (outcome.splitlines() or [""])[0][:300]
    head = f"**{first}**" + (f"; best val_loss {best:.4f}" if math.isfinite(best) else "")
    searched = (["Searched values:", "", *_value_lines(values)] if values else
                ["The study searched no parameter."])
    return "\n".join([head, "", *searched, "",
                      "Its params list every parameter it trained with; `trial_config.json`, "
                      "its whole trainer config."])


def study_note(rows: list[TrialRow], statuses: Mapping[str, int],
               transfer: Transfer | None = None) -> str:
    """A study's description from its two best trial rows (`tuner best`'s order): the best trial,
    its margin over the runner-up, their searched values, the trials by status and, of a
    transfer study, whether the best value held across the sizes."""
    counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    tally = f"{sum(statuses.values())} trials: {counts}."
    if not rows or not rows[0].usable:
        return f"No trial reached a finite val_loss without diverging or failing.\n\n{tally}"
    best, second = rows[0], (rows[1] if len(rows) > 1 and rows[1].usable else None)
    head = f"**Best: trial {best.trial_id}**, best val_loss {best.val_loss:.4f}"
    if second is not None:
        head += (f", {second.val_loss - best.val_loss:.4f} below the runner-up, trial "
                 f"{second.trial_id} ({second.val_loss:.4f})")
    ended = " (PBT: the values it ended with)" if best.pbt else ""
    values = (["Its searched values" + ("" if second is None else " (the runner-up's in brackets)")
               + f"{ended}:", "", *_value_lines(best.params, second and second.params)]
              if best.params else ["The study searched no parameter."])
    held = [] if transfer is None else [
        f"Transfer over {transfer.field}: {transfer.verdict()} (`tuner best` and `tuner "
        "report` show each size's curve).", ""]
    return "\n".join([head + ".", "", *values, "", *held, tally, "",
                      "The charts: the trials' curves by metric, and the study's own, "
                      "`study/…` against the tokens all its trials trained."])


def sample_text(tokens: int, step: int, prompt: str, text: str) -> str:
    """sample.txt: a trial's generation, headed by when it was made and the prompt it continues."""
    return (f"# sample at {tokens:,} tokens (step {step})\n"
            f"# prompt: {json.dumps(prompt, ensure_ascii=False)}\n{prompt}{text}\n")
