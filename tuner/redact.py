"""Credentials in URIs (a store's `postgresql://user:PASSWORD@host/db`, a `?token=` in a query)
are kept out of what tuner prints and records in MLflow; only the study's own state under
--storage keeps them, for --resume."""

from __future__ import annotations

import re

# The userinfo of a URI: a password may hold "/" and "@" unescaped (SQLAlchemy and requests read
# up to the last "@" before the host), so it ends at the "@" whose host runs to a "/", "?", "#",
# blank or the end without another "@". A user alone may be a token (https://TOKEN@host).
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)([^/\s:@]+)(:\S*?)?"
                       r"@(?=[^\s@/?#]*(?:[\s/?#]|$))")
# A query parameter that carries a secret: ?password=, &token=, &X-Amz-Signature=, &api_key=...
_SECRET_QUERY = re.compile(r"([?&][\w.-]*(?:pass|pwd|token|secret|key|sig|credential)[\w.-]*=)"
                           r"[^&\s#]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the credentials of every URI in it replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m[1]}{m[2]}:***@" if m[3] else f"{m[1]}***@", text)
    return _SECRET_QUERY.sub(r"\1***", text)
