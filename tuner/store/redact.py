"""Credentials in URIs (a store's `postgresql://user:PASSWORD@host/db`, a `?token=` in a query)
are kept out of what tuner prints and records in MLflow; only the study's own state under
--storage keeps them, for --resume.

The URIs tuner is given (--tracking-uri, MLFLOW_TRACKING_URI, a study file's tracking.uri and
search.storage) are `remember`ed and masked by their structure, whatever their passwords hold;
other URIs in a text are found by pattern."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

MASK = "***"
# A query parameter named for a secret: password, sslpassword, csrftoken, X-Amz-Signature,
# api_key, sig (not metric_key, tokens or design).
_SECRET_NAME = (r"(?:[\w.-]*(?:password|passwd|pwd|token|secret|signature|credential)|"
                r"(?:[\w.-]*[_.-])?(?:sig|(?:api|access|secret|private|account)[_.-]?key))")
_QUERY_VALUE = re.compile(rf"[?&]{_SECRET_NAME}=([^&]*)", re.IGNORECASE)
_REQUOTED = "!#$%&'()*+,/:;=?@[]~"  # what requests leaves as it is in a URL
_SHORTEST_SECRET = 4  # a shorter one alone is masked only inside its URI, not in any text
_CONTEXT = 6  # characters of a URI that mark a piece of its secret quoted with them
_LONGEST = 10_000  # a longer "URI" is refused as one (a study file's), and masked by pattern

# The userinfo of a URI in free text: a password may hold "/", "@", "?" and "#" unescaped
# (SQLAlchemy and requests read up to the last "@" before the host), so it ends at the "@" whose
# host runs to a "/", "?", "#", blank or the end without another "@"; but after a port and a path
# ("host:5000/x"), a "?" or "#" starts a query. A password may hold blanks too (SQLAlchemy reads
# them), unless it starts with one or a digit ("http://h:5000 failed for a@b.org"), or would cross
# a quote (out of a JSON string). A user alone may be a token (https://TOKEN@host).
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)([^/\s:@]*)"
                       r"(:(?:(?!\d+/)\S*?|[^\s?#]*?|(?![\d\s])[^@\n\"']*?))?"
                       r"@(?=[^\s@/?#]*(?:[\s/?#]|$))")
# A secret query parameter in free text: its value ends where a quote, bracket or separator of
# the text around the URI begins.
_SECRET_QUERY = re.compile(rf"([?&]{_SECRET_NAME}=)[^&\s#\"'<>,;)\]}}]+", re.IGNORECASE)

_known: dict[str, str] = {}  # each URI tuner was given, and its masked form
_secrets: set[str] = set()  # their secrets, in each form a library may echo one


def mask_uri(uri: str) -> str:
    """`uri` with everything between `://` and its last "@" masked (the user kept where a ":"
    follows it), and the whole value of each secret-named query parameter."""
    shown, end = [], 0
    for start, stop in _secret_spans(uri):
        shown += [uri[end:start], MASK]
        end = stop
    return "".join([*shown, uri[end:]])


def _secret_spans(uri: str) -> list[tuple[int, int]]:
    """Where in `uri` its secrets are: each secret-named query parameter's value, up to the next
    "&" or the end, and the password (or a user alone, a token) up to the last "@" outside them."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return []
    spans = [m.span(1) for m in _QUERY_VALUE.finditer(uri)]
    at = next((i for i in range(len(uri) - 1, len(scheme) + 2, -1)
               if uri[i] == "@" and not any(a <= i < b for a, b in spans)), None)
    if at is not None and not rest.startswith("/"):  # sqlite:////a@b.db has a path, no authority
        begin = len(scheme) + 3
        colon = uri.find(":", begin, at)
        spans.append((begin if colon < 0 else colon + 1, at))
    return _merged(spans)  # a password may hold a whole "?token=x&"


def _merged(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """`spans` in order, those that overlap or touch joined."""
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


def _forms(text: str) -> set[str]:
    """`text` as it may be quoted: raw, in a JSON, Python or YAML string, percent-encoded (as
    urllib, SQLAlchemy or requests do) or decoded."""
    plain = {text, unquote(text), unquote_plus(text)}
    return {form for p in plain for form in (
        p, quote(p), quote(p, safe=""), quote(p, safe=" +"), quote(p, safe=_REQUOTED),
        quote_plus(p), repr(p)[1:-1], json.dumps(p)[1:-1],
        json.dumps(p, ensure_ascii=False)[1:-1], p.replace("'", "''"))}


def remember(uri: str | None) -> None:
    """Mask `uri` by its structure, and its secrets wherever they appear, in all `redact` does."""
    if not uri or len(uri) > _LONGEST or uri in _known:
        return
    masked = mask_uri(uri)
    _known[uri] = masked
    if masked == uri:
        return
    for form in (form for a, b in _secret_spans(uri) for form in _forms(uri[a:b])):
        if len(form) >= _SHORTEST_SECRET and not any(form in m for m in _known.values()):
            _secrets.add(form)  # unless the masked URI shows it anyway: a user or host, say


def _mask_pieces(text: str, uri: str) -> str:
    """`text` with each piece of a secret of `uri` masked that it quotes with the URI's text
    around it: a parser that cut the URI inside a password names the rest ("#Zx@host/db")."""
    cut = []
    for a, b in _secret_spans(uri):
        for k in range(a, b):
            ahead, behind = uri[k:k + _CONTEXT], uri[max(0, k + 1 - _CONTEXT):k + 1]
            for p in _found(text, ahead) if len(ahead) == _CONTEXT else ():
                if _common(text[p:], uri[k:]) > b - k:  # on past the secret, into the URI
                    cut.append((p, p + b - k))
            for p in _found(text, behind) if len(behind) == _CONTEXT else ():
                end = p + len(behind)
                if _common(text[:end][::-1], uri[:k + 1][::-1]) > k + 1 - a:
                    cut.append((end - (k + 1 - a), end))
    shown, end = [], 0
    for start, stop in _merged(span for span in cut if span[1] - span[0] >= 2):
        shown += [text[end:start], MASK]  # (one character of a password tells little)
        end = stop
    return "".join([*shown, text[end:]])


def _found(text: str, piece: str) -> list[int]:
    """Where `piece` starts in `text`."""
    at, found = text.find(piece), []
    while at >= 0:
        found.append(at)
        at = text.find(piece, at + 1)
    return found


def _common(a: str, b: str) -> int:
    """The length of the longest prefix `a` and `b` share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def redact(text: str) -> str:
    """`text` with the credentials of every URI in it replaced by ***."""
    for uri in sorted(_known, key=len, reverse=True):
        if _known[uri] != uri:
            for quoted in (repr, json.dumps, lambda s: json.dumps(s, ensure_ascii=False)):
                text = text.replace(quoted(uri)[1:-1], quoted(_known[uri])[1:-1])
            text = text.replace(uri, _known[uri])
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for uri in _known:
        text = _mask_pieces(text, uri)
    text = _USERINFO.sub(lambda m: f"{m[1]}{m[2]}:{MASK}@" if m[3] is not None
                         else f"{m[1]}{MASK}@", text)
    return _SECRET_QUERY.sub(rf"\1{MASK}", text)


def mask_log_records() -> None:
    """Pass every log record made from now on in this process through `redact`: a library's
    warning may quote an error, URI and all (MLflow's retries do). Idempotent."""
    make = logging.getLogRecordFactory()
    if getattr(make, "masked", False):
        return

    def masked(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            record.msg, record.args = redact(record.getMessage()), None
        except Exception:  # noqa: BLE001 - a message its arguments do not fit: logging says so
            return record
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    masked.masked = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked)
