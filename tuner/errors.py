"""The one error type for bad user input: the CLI prints it on one line and exits with code 2."""

from __future__ import annotations

from tuner.store.redact import redact


class UserError(Exception):
    """Bad input (a space, a config, a data file, a checkpoint, a run id): nothing was started."""


def reason(err: BaseException, limit: int = 300) -> str:
    """The first line of an error, short enough for one line of output: a long one keeps its end,
    where a wrapped error's cause is (a connection refused, after the URL that failed)."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    line = redact(text.splitlines()[0])  # before the cut, which could leave part of a password
    return line if len(line) <= limit else f"{line[:limit // 2]} … {line[-(limit // 2):]}"
