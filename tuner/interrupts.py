"""SIGTERM (`kill`, `docker stop`, a batch scheduler's time limit) stops a command as Ctrl-C does,
so its clean-up runs: no half-written folder is left behind."""

from __future__ import annotations

import signal


def sigterm_as_ctrl_c() -> None:
    """From now on SIGTERM raises SIGINT in this process (KeyboardInterrupt, or a study's hold)."""
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
