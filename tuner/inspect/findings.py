"""What a report says of a study, read once from MLflow and written as summary.md and study.html:
its trials' curves and rows, the winner and its margin, and the importance of each value."""

from __future__ import annotations

from dataclasses import dataclass

from tuner.inspect.importance import Curve, Importance
from tuner.output import count
from tuner.store.rows import TrialRow, best_reached_at
from tuner.store.transfer import Transfer

NO_BEST = "Every trial that ended diverged or failed: none has a config worth reproducing."


@dataclass
class Findings:
    """A study as the report describes it."""

    study: str
    curves: list[Curve]
    rows: list[TrialRow]  # every trial, best first (runs.ranked)
    importance: Importance | None
    note: str  # the trials the importance is over, or why there is none
    replay_cmd: str  # reproduces the best trial ("" when there is none)
    tokens: int  # trained by the whole study
    transfer: Transfer | None = None  # a transfer study's trials by size

    @property
    def best(self) -> TrialRow | None:
        """The best trial; None when every trial that ended diverged or failed."""
        return self.rows[0] if self.rows and self.rows[0].usable else None

    @property
    def runner_up(self) -> TrialRow | None:
        """The second best trial, if it can be the best."""
        return self.rows[1] if len(self.rows) > 1 and self.rows[1].usable else None

    def reached_at(self, row: TrialRow) -> int:
        """The tokens at which a trial first reached its best val_loss."""
        points = next((c.finite() for c in self.curves if c.run_id == row.run_id), [])
        return best_reached_at(points) if points else row.tokens

    def counts(self) -> str:
        """"10 trials (3 completed, 7 stopped), 1,925,120 tokens trained in all."."""
        by_status: dict[str, int] = {}
        for c in self.curves:
            by_status[c.status] = by_status.get(c.status, 0) + 1
        return (f"{count(len(self.curves), 'trial')} ("
                + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
                + f"), {self.tokens:,} tokens trained in all.")

    def winner(self) -> str:
        """The best trial's val_loss, where it was reached, and its margin over the runner-up."""
        row, second = self.best, self.runner_up
        assert row is not None
        text = (f"best val_loss {row.val_loss:.4f} (perplexity {row.perplexity:.2f}), reached "
                f"at {self.reached_at(row):,} of the {row.tokens:,} tokens it trained")
        if second is None:
            return text + "; no other trial to compare with."
        gap = second.val_loss - row.val_loss
        return (text + f"; {gap:.4f} ({gap / second.val_loss:.1%}) below the runner-up, trial "
                f"{second.trial_id} ({second.val_loss:.4f}).")
