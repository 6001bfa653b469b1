"""The one error type for bad user input: the CLI prints it on one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (a space, a config, a data file, a checkpoint, a run id): nothing was started."""


def reason(err: BaseException, limit: int = 300) -> str:
    """The first line of an error, short enough for one line of output."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
