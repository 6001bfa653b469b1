"""Consoles for the CLI's tables: a terminal's width, or a whole line where output goes to a
file."""

from __future__ import annotations

import os

from rich.console import Console

FILE_WIDTH = 200  # a file or pipe has no width of its own: wide enough that no value is cut


def console(*, stderr: bool = False, highlight: bool = False) -> Console:
    """A console for tables; writing to a file or pipe, it is FILE_WIDTH wide unless COLUMNS says
    otherwise (Rich's default there is 80, which cuts the values of a wide table)."""
    out = Console(stderr=stderr, highlight=highlight)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = FILE_WIDTH
    return out


def count(amount: float, noun: str) -> str:
    """"1 trial", "3 trials", "0.5 GPUs"."""
    return f"{amount:g} {noun}" + ("" if amount == 1 else "s")

