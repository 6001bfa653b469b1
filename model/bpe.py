"""Byte-level BPE training: GPT-2 pre-tokenization, parallel pre-token counting, incremental merges.

Vocabulary layout (the CS336 convention): special tokens get ids 0..k-1 in the order given, the 256
single bytes get ids k..k+255 (byte b is id k+b), and each merge adds the next id.
Input must be UTF-8: invalid bytes raise ValueError naming the file and the byte offset.
"""

from __future__ import annotations

import heapq
import multiprocessing
import multiprocessing.pool
import multiprocessing.resource_tracker
import os
import pickle
import re
import signal
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PRETOKEN_RE = regex.compile(GPT2_PATTERN)
DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>",)  # the story separator of TinyStories and OWT
# The same pattern for ASCII-only text, where \p{L} is [A-Za-z], \p{N} is [0-9] and \s is
# [\t\n\v\f\r ]; the standard library's engine runs it about twice as fast. Letters and digits
# come first (no other alternative matches where they do), which saves the engine a few tries.
_WS = r"\t\n\x0b\x0c\r "
ASCII_PRETOKEN_RE = re.compile(rf""" ?[A-Za-z]+| ?[0-9]+|'(?:[sdmt]|ll|ve|re)"""
                               rf"""| ?[^{_WS}A-Za-z0-9]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+""")

CHUNK_BYTES = 4 << 20  # per task: bounds a worker's memory whatever the file size
PARALLEL_MIN_BYTES = 4 << 20  # below this, starting worker processes costs more than it saves
_SCAN_BYTES = 1 << 16

Progress = Callable[[int], None]  # called with an amount done (bytes read, merges made)


def special_pattern(special_tokens: Sequence[str]) -> regex.Pattern | None:
    """A regex matching any special token, longest first so overlapping ones prefer the longer."""
    if not special_tokens:
        return None
    if "" in special_tokens:
        raise ValueError("a special token is empty; give each one at least one character")
    ordered = sorted(set(special_tokens), key=len, reverse=True)
    return regex.compile("|".join(regex.escape(tok) for tok in ordered))


@lru_cache(maxsize=8)
def _cut_pattern(special_tokens: tuple[str, ...]) -> regex.Pattern | None:
    """Matches (empty or a special token) at byte offsets where a text can be cut (see next_cut)."""
    specials = [tok.encode() for tok in special_tokens]
    alternatives = []
    if specials and _overlap_free(specials):
        alternatives += [regex.escape(tok) for tok in sorted(specials, key=len, reverse=True)]
    if not any(b"\n" in tok for tok in specials):
        # After a newline between two visible ASCII characters: no pre-token spans the cut, and
        # none before it depends on the text after it. A CRLF is cut between its CR and LF: the
        # whitespace rule splits "\r\nX" as \r, \n, but keeps "\r\n" whole at a text's end,
        # which a special token after it makes (the text is split at special tokens first).
        not_special = b"".join(rb"(?!" + regex.escape(tok) + rb")" for tok in specials)
        alternatives += [rb"(?<=[!-~]\n)(?=[!-~])",
                         rb"(?<=[!-~]\r)(?=\n" + not_special + rb"[!-~])"]
    return regex.compile(b"|".join(alternatives)) if alternatives else None


def _overlap_free(tokens: list[bytes]) -> bool:
    """True when no token's proper suffix overlaps a token's start: every occurrence is certain."""
    return not any(t.startswith(s[i:]) or s[i:].startswith(t)
                   for s in tokens for t in tokens for i in range(1, len(s)))


def find_cuts(path: Path, special_tokens: Sequence[str], start: int, end: int,
              chunk_bytes: int = CHUNK_BYTES) -> list[int]:
    """Offsets start < ... < end cutting [start, end) into chunks of about chunk_bytes.

    Each cut is a next_cut, so the chunks pre-tokenize and encode exactly as the whole text does.
    """
    cuts = [start]
    while cuts[-1] + chunk_bytes < end:
        cut = next_cut(path, special_tokens, cuts[-1] + chunk_bytes, end)
        if cut is None:
            break
        cuts.append(cut)
    return cuts + [end]


def next_cut(path: Path, special_tokens: Sequence[str], pos: int, end: int) -> int | None:
    """The first offset in [pos, end) where the text can be cut without changing its tokens:
    just before a special token, or after a line break between two visible characters."""
    pattern = _cut_pattern(tuple(special_tokens))
    if pattern is None:
        return None
    # Blocks overlap by enough to see a special token or the newline look-behind across them.
    overlap = max((len(tok.encode()) for tok in special_tokens), default=0) + 2
    base = max(pos - 2, 0)
    with open(path, "rb") as f:
        while base < end:
            f.seek(base)
            block = f.read(min(_SCAN_BYTES, end - base) + overlap)
            for match in pattern.finditer(block):
                if pos <= base + match.start() < end:
                    return base + match.start()
            if len(block) <= overlap:
                return None
            base += len(block) - overlap
    return None


def read_text(path: Path, start: int, end: int) -> str:
    """Bytes [start, end) of a UTF-8 file as text; invalid UTF-8 raises ValueError (offset)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: invalid UTF-8 at byte {start + err.start} ({err.reason}); "
                         "convert the file to UTF-8 (e.g. iconv -t utf-8)") from None


def pretokenize(text: str) -> list[str]:
    """The GPT-2 pre-tokens of text (which contains no special tokens), in order."""
    return (ASCII_PRETOKEN_RE if text.isascii() else PRETOKEN_RE).findall(text)


def count_text(text: str, specials: regex.Pattern | None) -> Counter[str]:
    """Frequency of every pre-token in text; special tokens split it and are never counted."""
    counts: Counter[str] = Counter()
    for part in (specials.split(text) if specials else (text,)):
        counts.update(pretokenize(part))
    return counts


def _count_chunk(args: tuple[Path, int, int, tuple[str, ...]]) -> tuple[int, Counter[str]]:
    path, start, end, special_tokens = args
    return end - start, count_text(read_text(path, start, end), special_pattern(special_tokens))


def parallel_map(func: Callable[[Any], Any], tasks: Sequence, workers: int,
                 initializer: Callable | None = None, initargs: tuple = ()) -> Iterator[Any]:
    """`func` of each task in worker processes, in task order, with 2·`workers` tasks in flight.

    Results come back through files, named in messages too short to be cut: a worker stopped
    while sending megabytes would leave the pool waiting for the rest for ever (`Pool.terminate`
    too), so the pool stops at once at any moment (Ctrl-C, an error, the end). The workers
    ignore Ctrl-C, which reaches the whole process group: the parent stops them.
    """
    pool = None
    with tempfile.TemporaryDirectory(prefix="parallel-map-") as folder:
        try:
            # Started first: it starts Ctrl-C-proof itself, and lets Ctrl-C through as it returns.
            multiprocessing.resource_tracker.ensure_running()
            with _ctrl_c_held():
                pool = _start_pool(workers, initializer, initargs)

            def submit(index: int, task: Any) -> multiprocessing.pool.AsyncResult:
                return pool.apply_async(_result_to_file, (func, task, f"{folder}/{index}"))

            todo = enumerate(tasks)
            in_flight = deque(submit(*item) for item in islice(todo, 2 * workers))
            while in_flight:
                path = in_flight.popleft().get()
                in_flight.extend(submit(*item) for item in islice(todo, 1))
                yield _result_from_file(path)
        finally:
            if pool is not None:
                pool.terminate()


def _result_to_file(func: Callable[[Any], Any], task: Any, path: str) -> str:
    with open(path, "wb") as file:
        pickle.dump(func(task), file, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _result_from_file(path: str) -> Any:
    with open(path, "rb") as file:
        result = pickle.load(file)  # written just now by a worker, in a folder only we can enter
    os.unlink(path)
    return result


@contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C back while the pool's processes start: they start with it held (a process
    keeps its parent's signal mask), so none dies of it, with a traceback, before it ignores it.
    The parent takes it once they have started."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    # The mask is this thread's: another (a progress bar's) may take the signal, and Python then
    # raises it in the main thread all the same, halfway through starting the pool. Kept until
    # the pool has started, where Python may change the handler (the main thread, and one it set).
    handler = signal.getsignal(signal.SIGINT)
    keep = threading.current_thread() is threading.main_thread() and handler is not None
    caught: list[bool] = []
    if keep:
        signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        if keep:
            signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if caught:
            signal.raise_signal(signal.SIGINT)


def _start_pool(workers: int, initializer: Callable | None,
                initargs: tuple) -> multiprocessing.pool.Pool:
    """A process pool that is safe to start from a threaded process (forkserver where available)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("spawn")
    else:
        ctx = multiprocessing.get_context("forkserver")
        # Workers fork from a server that has already imported these, so each starts fast.
        ctx.set_forkserver_preload(["__main__", "model.tokenizer"])
    return ctx.Pool(workers, _start_worker, (initializer, initargs))


def _start_worker(initializer: Callable | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the pool
    if initializer is not None:
        initializer(*initargs)


def default_workers() -> int:
    """All the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def count_pretokens(path: Path, special_tokens: Sequence[str] = (), *, start: int = 0,
                    end: int | None = None, workers: int | None = None,
                    progress: Progress | None = None) -> Counter[str]:
    """Pre-token frequencies of bytes [start, end) of a file, counted in parallel over chunks."""
    path = Path(path)
    end = path.stat().st_size if end is None else end
    workers = workers or default_workers()
    cuts = [start, end]
    if end - start >= PARALLEL_MIN_BYTES:  # chunks also bound the memory of one process
        cuts = find_cuts(path, special_tokens, start, end,
                         min(CHUNK_BYTES, -(-(end - start) // workers)))
    tasks = [(path, a, b, tuple(special_tokens)) for a, b in zip(cuts, cuts[1:])]
    counts: Counter[str] = Counter()
    parallel = workers > 1 and len(tasks) > 1
    for done, part in (parallel_map(_count_chunk, tasks, min(workers, len(tasks))) if parallel
                       else map(_count_chunk, tasks)):
        counts.update(part)
        if progress:
            progress(done)
    return counts


# Tie-break key: a token's bytes mapped so that smaller keys mean lexicographically greater bytes.
# Each byte b becomes the 2-byte number 256-b and a terminator 257 ends the token, so keys are
# prefix-free and a pair's key is the concatenation of its tokens' keys.
_INVERTED = [(256 - b).to_bytes(2, "big") for b in range(256)]
_END = (257).to_bytes(2, "big")


def _key(token: bytes) -> bytes:
    return b"".join(_INVERTED[b] for b in token) + _END


def check_special_tokens(special_tokens: Sequence[str]) -> None:
    """Raise ValueError for a special token of one byte: that byte has its own id already, and a
    vocabulary holding the same bytes twice cannot be saved or decoded."""
    for token in special_tokens:
        if len(token.encode()) == 1:
            raise ValueError(f"{token!r} is a single byte, a token already; a special token "
                             "needs two bytes or more")


def check_vocab_size(vocab_size: int, special_tokens: Sequence[str]) -> None:
    """Raise ValueError unless vocab_size leaves room for the 256 bytes and the special tokens."""
    least = 256 + len(set(special_tokens))
    if vocab_size < least:
        raise ValueError(f"vocab_size={vocab_size} is smaller than 256 bytes + "
                         f"{least - 256} special tokens; use at least {least}")


def merge_counts(counts: Counter[str] | dict[str, int], vocab_size: int,
                 special_tokens: Sequence[str] = (), progress: Progress | None = None
                 ) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """BPE merges learned from pre-token frequencies until the vocabulary has vocab_size tokens.

    Each step merges the most frequent adjacent pair (ties: the lexicographically greatest pair of
    byte strings). Stops early when no pair is left.
    """
    specials = list(dict.fromkeys(special_tokens))
    check_vocab_size(vocab_size, specials)
    vocab = {i: tok.encode() for i, tok in enumerate(specials)}
    first = len(vocab)
    vocab.update({first + b: bytes([b]) for b in range(256)})
    keys = {i: _key(tok) for i, tok in vocab.items()}

    words: list[list[int]] = []
    freqs: list[int] = []
    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}  # pair -> words that contain (or once contained) it
    for text, freq in counts.items():
        word = [first + b for b in text.encode()]
        if len(word) < 2:
            continue
        index = len(words)
        words.append(word)
        freqs.append(freq)
        for pair in zip(word, word[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + freq
            where.setdefault(pair, set()).add(index)
    heap = [(-c, keys[a] + keys[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    while len(vocab) < vocab_size:
        pair = _pop_best(heap, pair_counts, keys)
        if pair is None:
            break
        a, b = pair
        new = len(vocab)
        vocab[new] = vocab[a] + vocab[b]
        keys[new] = _key(vocab[new])
        merges.append((vocab[a], vocab[b]))
        created: set[tuple[int, int]] = set()
        for index in where.pop(pair):
            _merge_word(index, words, freqs[index], a, b, new, pair_counts, where, created)
        for p in created:
            heapq.heappush(heap, (-pair_counts[p], keys[p[0]] + keys[p[1]], p[0], p[1]))
        if progress:
            progress(1)
    return vocab, merges


def _pop_best(heap: list, pair_counts: dict[tuple[int, int], int],
              keys: dict[int, bytes]) -> tuple[int, int] | None:
    """The best pair. Counts only fall after a pair appears, so a stale entry is an upper bound:
    re-push it with its current count and look again."""
    while heap:
        neg, _, a, b = heapq.heappop(heap)
        count = pair_counts.get((a, b), 0)
        if count == -neg:
            return a, b
        if count > 0:
            heapq.heappush(heap, (-count, keys[a] + keys[b], a, b))
    return None


def _merge_word(index: int, words: list[list[int]], freq: int, a: int, b: int, new: int,
                pair_counts: dict[tuple[int, int], int], where: dict[tuple[int, int], set[int]],
                created: set[tuple[int, int]]) -> None:
    """Replace (a, b) by new in one word, updating only the pair counts next to each merge."""
    word = words[index]
    merged: list[int] = []
    sites: list[int] = []  # (old position, new position) of each merge, flattened
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            sites += (i, len(merged))
            merged.append(new)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    if not sites:
        return  # a stale index entry: the word lost this pair to an earlier merge
    m = len(merged)
    # Pair k is (word[k], word[k + 1]); a set, because merges side by side share neighbours.
    gone = {k for i in sites[::2] for k in (i - 1, i, i + 1) if 0 <= k < n - 1}
    born = {k for j in sites[1::2] for k in (j - 1, j) if 0 <= k < m - 1}
    for k in gone:
        pair = (word[k], word[k + 1])
        left = pair_counts[pair] - freq
        if left:
            pair_counts[pair] = left
        else:
            del pair_counts[pair]
    for k in born:  # every one contains the new token: the index needs this word only for them
        pair = (merged[k], merged[k + 1])
        pair_counts[pair] = pair_counts.get(pair, 0) + freq
        where.setdefault(pair, set()).add(index)
        created.add(pair)
    words[index] = merged


def train_bpe(input_path: str | os.PathLike, vocab_size: int, special_tokens: Sequence[str] = (),
              *, start: int = 0, end: int | None = None, workers: int | None = None,
              count_progress: Progress | None = None, merge_progress: Progress | None = None
              ) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on bytes [start, end) of a UTF-8 text file.

    Returns (vocab: id -> bytes, merges in creation order). Raises ValueError for an empty text,
    invalid UTF-8 or a vocab_size below 256 + len(special_tokens).
    """
    path = Path(input_path)
    end = path.stat().st_size if end is None else end
    check_vocab_size(vocab_size, special_tokens)
    if end <= start:
        raise ValueError(f"{path}: the text is empty; nothing to train a tokenizer on")
    counts = count_pretokens(path, special_tokens, start=start, end=end, workers=workers,
                             progress=count_progress)
    return merge_counts(counts, vocab_size, special_tokens, merge_progress)
