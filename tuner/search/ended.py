"""How a run of a study ended: what the CLI turns into its exit code and the Python API into its
result (tuner.api.search)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FINISHED = "finished"  # ran to its end (with a best trial or none: every trial failed or diverged)
INTERRUPTED = "interrupted"  # stopped (Ctrl-C, a signal): resumable
FAILED = "failed"  # the tracking store or the disk failed mid-study: resumable once they are back
EXIT_CODES = {INTERRUPTED: 130, FAILED: 1}


@dataclass(frozen=True)
class Ended:
    """How a study's run ended: its status, what MLflow holds of it (None when it stopped without a
    summary: a second stop, a failure), why it stopped, and the command that continues it."""

    status: str
    study: Any
    summary: Any | None  # tuner.search.run.console.Summary
    message: str = ""
    resume_command: str = ""

    @property
    def exit_code(self) -> int:
        """0 with a best trial; 1 with none, or a failed store or disk; 130 when stopped."""
        if self.status in EXIT_CODES:
            return EXIT_CODES[self.status]
        return 0 if self.summary is not None and self.summary.best_run_id else 1
