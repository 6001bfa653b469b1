"""`SpaceError`: every problem of a study file, each with its YAML path and line."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from tuner.errors import UserError
from tuner.store.redact import redact


class Issue(NamedTuple):
    """One problem: where in the YAML (dotted path, 1-based line if known) and what is wrong."""

    path: str
    line: int | None
    message: str


class SpaceError(UserError):
    """A study file that cannot run; `issues` lists every problem found, in file order."""

    def __init__(self, file: str | Path | None, issues: list[Issue]):
        self.file = str(file) if file is not None else None
        self.issues = sorted((i._replace(message=redact(i.message)) for i in issues),
                             key=lambda i: i.line or 0)
        super().__init__("\n".join(self._format(i) for i in self.issues))

    def _format(self, issue: Issue) -> str:
        file = None if issue.path.startswith("--") else self.file  # a flag's value, not the file's
        where = ":".join(str(p) for p in (file, issue.line) if p is not None)
        text = f"{issue.path}: {issue.message}" if issue.path else issue.message
        return f"{where}: {text}" if where else text
