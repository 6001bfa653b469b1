"""Credentials in URIs (a store's `postgresql://user:PASSWORD@host/db`, a `?token=` in a query)
are kept out of what tuner prints and records in MLflow; only the study's own state under
--storage keeps them, for --resume."""

from __future__ import annotations

import re

# The userinfo of a URI: a password may hold "/", "@", "?" and "#" unescaped (SQLAlchemy and
# requests read up to the last "@" before the host), so it ends at the "@" whose host runs to a
# "/", "?", "#", blank or the end without another "@"; but after a port and a path ("host:5000/x"),
# a "?" or "#" starts a query. A password may hold blanks too (SQLAlchemy reads them), unless it
# starts with one or a digit ("http://h:5000 failed for a@b.org"), or would cross a quote (out of
# a JSON string). A user alone may be a token (https://TOKEN@host).
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)([^/\s:@]*)"
                       r"(:(?:(?!\d+/)\S*?|[^\s?#]*?|(?![\d\s])[^@\n\"']*?))?"
                       r"@(?=[^\s@/?#]*(?:[\s/?#]|$))")
# A query parameter whose name ends in a secret's word: ?password=, ?sslpassword=, &csrftoken=,
# &X-Amz-Signature=, &api_key=, &sig= (not &metric_key=, &tokens= or &design=). The value ends
# where a quote, bracket or separator of the text around the URI begins.
_SECRET_QUERY = re.compile(
    r"([?&](?:[\w.-]*(?:password|passwd|pwd|token|secret|signature|credential)|"
    r"(?:[\w.-]*[_.-])?(?:sig|(?:api|access|secret|private|account)[_.-]?key))=)"
    r"[^&\s#\"'<>,;)\]}]+", re.IGNORECASE)

def redact(text: str) -> str:
    """`text` with the credentials of every URI in it replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m[1]}{m[2]}:***@" if m[3] is not None else f"{m[1]}***@",
                         text)
    return _SECRET_QUERY.sub(r"\1***", text)
