"""Download a file into a cache folder: resume over HTTP Range, check its size and sha256.

A file gets its final name only once complete and checked, so a cached file is a good one; an
interrupted download stays as NAME.part and the next attempt (or run) continues from its end.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from pathlib import Path

from tuner.errors import UserError
from tuner.folder_lock import folder_lock

TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
TINYSTORIES_FILES = {"train": "TinyStoriesV2-GPT4-train.txt",
                     "valid": "TinyStoriesV2-GPT4-valid.txt"}

_BLOCK = 1 << 20
_SHA256 = re.compile(r'^(?:w/)?"?([0-9a-f]{64})"?$')  # matched against the lower-cased header


class _Interrupted(Exception):
    """The connection ended before the promised bytes arrived: worth resuming."""


def tinystories(cache_dir: Path, progress: bool = True) -> dict[str, Path]:
    """TinyStoriesV2-GPT4 train and valid text, downloaded into cache_dir once."""
    return {split: download(TINYSTORIES_URL + name, cache_dir, progress=progress)
            for split, name in TINYSTORIES_FILES.items()}


def download(url: str, cache_dir: Path, *, size: int | None = None, sha256: str | None = None,
             attempts: int = 5, timeout: float = 60.0, progress: bool = True) -> Path:
    """cache_dir/<file name of url>, downloading it unless present; UserError when it fails.

    Checks the size against `size` and the server's Content-Length/Content-Range, and the sha256
    against `sha256` or one the server publishes (an ETag or X-Linked-Etag that is a sha256, as
    the Hugging Face hub sends for large files).
    """
    dest = Path(cache_dir) / url.rstrip("/").rsplit("/", 1)[-1]
    if dest.exists():
        return _cached(dest, size, sha256)
    made = [folder for folder in (dest.parent, *dest.parent.parents) if not folder.exists()]
    with folder_lock(dest.parent, lambda: _say_waiting(dest.parent)):
        if dest.exists():  # another process downloaded it while this one waited
            return _cached(dest, size, sha256)
        part = dest.with_name(dest.name + ".part")
        try:
            total, published = _fetch_with_retries(url, part, attempts, timeout, progress)
        except UserError:
            if not part.exists():  # nothing received: leave no folders behind either
                for folder in made:  # deepest first
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            raise
        _verify(url, part, size if size is not None else total,
                (sha256 or published or "").lower())
        part.rename(dest)
    return dest


def _cached(dest: Path, size: int | None, sha256: str | None) -> Path:
    """dest, a downloaded file, once checked against the expected size and sha256."""
    if (size is not None and dest.stat().st_size != size) or (
            sha256 and file_sha256(dest) != sha256.lower()):
        raise UserError(f"{dest}: the cached file is not the expected one (size {size}, "
                        f"sha256 {sha256}); delete it to download it again")
    return dest


def _say_waiting(folder: Path) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"waiting for another process downloading into {folder.resolve()}",
                               markup=False, highlight=False, soft_wrap=True)


def _fetch_with_retries(url: str, part: Path, attempts: int, timeout: float,
                        progress: bool) -> tuple[int | None, str | None]:
    """`_fetch`, again after a server error or a broken connection; UserError when it fails."""
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(2 ** attempt, 30))
        try:
            return _fetch(url, part, timeout, progress)
        except urllib.error.HTTPError as err:
            if err.code < 500:
                raise UserError(f"{url}: HTTP {err.code} {err.reason}; check the address") from None
            failure: Exception = err
        except (urllib.error.URLError, OSError, http.client.HTTPException, _Interrupted) as err:
            failure = err
    hint = f"resume from {part}" if part.exists() else "retry"
    raise UserError(f"{url}: download failed after {attempts} attempts ({failure}); run again "
                    f"to {hint}") from None


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> tuple[int | None, str | None]:
    """Continue part from its current length; return (total size, sha256 the server published)."""
    have = part.stat().st_size if part.exists() else 0
    redirects = _RecordRedirects()
    opener = urllib.request.build_opener(redirects)
    request = urllib.request.Request(url, headers={"User-Agent": "tuner",
                                                   **({"Range": f"bytes={have}-"} if have else {})})
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the part may already be complete
            return _range_total(err.headers), _published_sha256(redirects.headers + [err.headers])
        raise
    with response:
        headers = redirects.headers + [response.headers]
        if response.status == 206:
            start = _range_start(response.headers)
            if start != have:
                raise _Interrupted(f"server resumed at byte {start}, not {have}")
            total = _range_total(response.headers)
        else:  # the server ignored the Range header: start over
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        expected = None if total is None else total - have
        received = _copy(response, part, "ab" if have else "wb", have, total, progress,
                         part.name.removesuffix(".part"))
    if expected is not None and received < expected:
        raise _Interrupted(f"connection closed after {have + received} of {total} bytes")
    return total, _published_sha256(headers)


def _copy(response, part: Path, mode: str, have: int, total: int | None, progress: bool,
          name: str) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    received = 0
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar, \
            open(part, mode) as out:
        task = bar.add_task(f"downloading {name}", total=total, completed=have)
        while block := response.read(_BLOCK):
            out.write(block)
            received += len(block)
            bar.advance(task, len(block))
    return received


def _verify(url: str, part: Path, size: int | None, sha256: str) -> None:
    """Raise UserError (and drop the part file) when its size or sha256 is not the expected one."""
    got = part.stat().st_size
    problem = None
    if size is not None and got != size:
        problem = f"got {got} bytes, expected {size}"
    elif sha256 and (digest := file_sha256(part)) != sha256:
        problem = f"sha256 {digest} is not the expected {sha256}"
    if problem:
        part.unlink()
        raise UserError(f"{url}: {problem}; the partial file was deleted, run again to retry")


def file_sha256(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, read in blocks (progress is called with each block's size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()


def _range_start(headers: Message) -> int:
    match = re.match(r"bytes (\d+)-", headers.get("Content-Range", ""))
    return int(match.group(1)) if match else -1


def _range_total(headers: Message) -> int | None:
    match = re.search(r"/(\d+)$", headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _published_sha256(headers: list[Message]) -> str | None:
    for h in headers:
        for name in ("X-Linked-Etag", "ETag"):
            match = _SHA256.match(h.get(name, "").strip().lower())
            if match:
                return match.group(1)
    return None


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects like the default handler and keeps each redirect's headers."""

    def __init__(self) -> None:
        self.headers: list[Message] = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)
