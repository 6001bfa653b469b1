"""Passwords in URIs (a store's `postgresql://user:PASSWORD@host/db`) are kept out of what tuner
prints and records in MLflow; only the study's own state under --storage keeps them, for --resume."""

from __future__ import annotations

import re

# A database URI's password may hold "/" unescaped (SQLAlchemy takes everything up to the "@")
_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^\s@]+@")


def redact(text: str) -> str:
    """`text` with the password of every URI in it replaced by ***."""
    return _PASSWORD.sub(r"\1***@", text)
