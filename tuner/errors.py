"""The one error type for bad user input: the CLI prints it on one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (a space, a config, a data file, a checkpoint, a run id): nothing was started."""
