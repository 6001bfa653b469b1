"""SIGTERM (`kill`, `docker stop`, a batch scheduler's time limit) stops a command as Ctrl-C does,
so its clean-up runs: no half-written folder is left behind."""

from __future__ import annotations

import signal
from typing import Any


def sigterm_as_ctrl_c() -> None:
    """From now on SIGTERM raises SIGINT in this process (KeyboardInterrupt, or a study's hold)."""
    signal.signal(signal.SIGTERM, _as_ctrl_c)


def _as_ctrl_c(*_: Any) -> None:
    # A command a script started in the background ignores SIGINT (the shell's rule), and then
    # raising it would do nothing: SIGTERM must stop it all the same.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)
