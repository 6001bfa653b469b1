"""The error types for bad user input: the CLI prints one on one line and exits with code 2. Their
messages are masked (tuner.store.redact) as they are made: the Python API raises them as they are,
and a URI's password would show in a notebook's traceback."""

from __future__ import annotations

from tuner.store.redact import redact


class UserError(Exception):
    """Bad input (a space, a config, a data file, a checkpoint, a run id): nothing was started."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(arg) if isinstance(arg, str) else arg for arg in args))


class TrackingError(UserError):
    """A tracking store that cannot be used: unreachable, missing, not MLflow's, a bad URI."""


def reason(err: BaseException, limit: int = 300) -> str:
    """The first line of an error, short enough for one line of output: a long one keeps its end,
    where a wrapped error's cause is (a connection refused, after the URL that failed). A
    database's error that SQLAlchemy wrapped, as MLflow raises it, is the database's own."""
    err = _database_error(err)
    text = str(err).strip()
    if not text:
        return type(err).__name__
    line = redact(text.splitlines()[0])  # before the cut, which could leave part of a password
    return line if len(line) <= limit else f"{line[:limit // 2]} … {line[-(limit // 2):]}"


def _database_error(err: BaseException) -> BaseException:
    """The driver's error under SQLAlchemy's (its `orig`; SQLAlchemy's text leads with its own
    notes, then the SQL), along the causes an error was raised from; else `err`."""
    cause: BaseException | None = err
    while cause is not None:
        orig = getattr(cause, "orig", None)
        if isinstance(orig, BaseException):
            return orig
        cause = cause.__cause__
    return err
