"""Byte-level BPE tokenizer: encode/decode, lazy and parallel encoding, GPT-2 format files."""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from model.bpe import (
    CHUNK_BYTES,
    PARALLEL_MIN_BYTES,
    default_workers,
    find_cuts,
    parallel_map,
    pretokenize,
    read_text,
    special_pattern,
)

_CACHE_LIMIT = 1 << 18  # pre-tokens remembered; cleared when full so memory stays bounded
_BATCH_CHARS = 1 << 16  # encode_iterable gathers this much text before encoding it
_NO_MERGE = np.iinfo(np.int64).max  # the rank of a pair that no merge joins


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters (used in its files)."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
    chars = visible[:]
    n = 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(visible, map(chr, chars)))


class Tokenizer:
    """Encode text to token ids and back with a byte-level BPE vocabulary and its ranked merges."""

    def __init__(self, vocab: dict[int, bytes], merges: Sequence[tuple[bytes, bytes]],
                 special_tokens: Iterable[str] | None = None):
        self.vocab = dict(vocab)
        self.merges = list(merges)
        self.special_tokens = list(dict.fromkeys(special_tokens or ()))
        self._ids = {token: i for i, token in self.vocab.items()}
        for token in self.special_tokens:
            if token.encode() not in self._ids:  # appended after the largest id
                new = max(self.vocab, default=-1) + 1
                self.vocab[new] = token.encode()
                self._ids[token.encode()] = new
        self._special_re = special_pattern(self.special_tokens)
        self._longest_special = max(map(len, self.special_tokens), default=0)
        missing = [b for b in range(256) if bytes([b]) not in self._ids]
        if missing:
            raise ValueError(f"the vocabulary lacks {len(missing)} of the 256 single bytes "
                             f"(first: 0x{missing[0]:02x}); byte-level BPE needs all of them")
        self._byte_ids = np.array([self._ids[bytes([b])] for b in range(256)], np.int64)
        self._id_span = max(self.vocab) + 1
        ranks: dict[int, tuple[int, int]] = {}  # pair (a * span + b) -> (rank, merged id)
        for rank, (a, b) in enumerate(self.merges):
            for part in (a, b, a + b):
                if part not in self._ids:
                    raise ValueError(f"merge {rank + 1} ({_show(a)} {_show(b)}): "
                                     f"{_show(part)} is not in the vocabulary")
            ranks.setdefault(self._ids[a] * self._id_span + self._ids[b], (rank, self._ids[a + b]))
        pairs = sorted(ranks)  # for np.searchsorted; the _NO_MERGE sentinel ends each array
        self._pair_keys = np.array([*pairs, _NO_MERGE], np.int64)
        self._pair_ranks = np.array([*(ranks[k][0] for k in pairs), _NO_MERGE], np.int64)
        self._pair_merged = np.array([*(ranks[k][1] for k in pairs), -1], np.int64)
        self._cache: dict[str, bytes] = {}  # the ids of each pre-token met, as array("q") bytes

    @property
    def vocab_size(self) -> int:
        """Number of token ids (the vocabulary, special tokens included)."""
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of text; special tokens (longest first) map to their own ids."""
        return array("q", self._encode_packed(text)).tolist()

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Ids of the concatenated strings, lazily in bounded memory (the same ids as encode)."""
        pending = ""
        for batch in _batches(iterable, _BATCH_CHARS):
            text = pending + batch
            base, end = self._final_region(text)
            yield from self.encode(text[:base])
            pieces = pretokenize(text[base:end])[:-2]
            yield from array("q", self._encode_pieces(pieces))
            pending = text[base + sum(map(len, pieces)):]
        yield from self.encode(pending)

    def _encode_packed(self, text: str) -> bytes:
        """encode's ids as array("q") bytes."""
        if self._special_re is None:
            return self._encode_pieces(pretokenize(text))
        pieces: list[str] = []
        pos = 0
        for match in self._special_re.finditer(text):
            pieces += pretokenize(text[pos:match.start()])
            pieces.append(match.group())  # a token, and no pre-token of the text around it
            pos = match.end()
        pieces += pretokenize(text[pos:])
        return self._encode_pieces(pieces)

    def encode_file(self, path: str | os.PathLike, start: int = 0, end: int | None = None, *,
                    workers: int | None = None, progress: Callable[[int], None] | None = None
                    ) -> Iterator[array]:
        """Ids of bytes [start, end) of a UTF-8 file, in order, one array("q") per chunk.

        The chunks are cut where they encode as the whole text does and encoded on all cores.
        Invalid UTF-8 raises ValueError naming the file and the byte offset.
        """
        path = Path(path)
        end = path.stat().st_size if end is None else end
        workers = workers or default_workers()
        cuts = [start, end]
        if end - start >= PARALLEL_MIN_BYTES:
            cuts = find_cuts(path, self.special_tokens, start, end,
                             min(CHUNK_BYTES, -(-(end - start) // workers)))
        tasks = [(path, a, b) for a, b in zip(cuts, cuts[1:])]
        if workers == 1 or len(tasks) == 1:
            for _, a, b in tasks:
                yield array("q", self._encode_packed(read_text(path, a, b)))
                if progress:
                    progress(b - a)
            return
        state = (self.vocab, self.merges, self.special_tokens)
        encoded = parallel_map(_encode_span, tasks, min(workers, len(tasks)), _init_worker, state)
        for ids, (_, a, b) in zip(encoded, tasks):
            yield ids
            if progress:
                progress(b - a)

    def _final_region(self, text: str) -> tuple[int, int]:
        """(base, end): text[:base] ends with a special token no appended text can change, and
        text[base:end] is ordinary text whatever follows (a special token may be completing after).

        A GPT-2 pre-token depends on at most two characters past its end, so all pre-tokens of
        text[base:end] but the last two are final.
        """
        if self._special_re is None:
            return 0, len(text)
        end = max(len(text) - self._longest_special + 1, 0)
        base = 0
        for match in self._special_re.finditer(text):
            if match.start() >= end:
                break
            base = match.end()
        return base, max(base, end)

    def _encode_pieces(self, pieces: list[str]) -> bytes:
        cache = self._cache
        try:  # the common case, all pieces seen before, runs at C speed
            return b"".join(map(cache.__getitem__, pieces))
        except KeyError:
            if len(cache) > _CACHE_LIMIT:
                cache.clear()
            rest = []
            for piece in set(pieces).difference(cache):
                token = self._ids.get(piece.encode())
                if token is None:
                    rest.append(piece)
                else:  # a pre-token that is a token stays whole, as in tiktoken
                    cache[piece] = array("q", [token]).tobytes()
            if rest:
                cache.update(zip(rest, self._bpe([piece.encode() for piece in rest])))
            return b"".join(map(cache.__getitem__, pieces))

    def _bpe(self, pieces: list[bytes]) -> list[bytes]:
        """Apply the merges to many pre-tokens at once: each round, every pre-token merges its
        leftmost best-ranked adjacent pair, and leaves once it has none."""
        ids = self._byte_ids[np.frombuffer(b"".join(pieces), np.uint8)]
        owner = np.repeat(np.arange(len(pieces)), list(map(len, pieces)))  # pre-token of each id
        ranks, found = self._pairs_at(ids, owner, np.arange(len(ids)))
        done_ids, done_owner = [], []
        while len(ids):
            starts = np.r_[True, owner[1:] != owner[:-1]]  # where each pre-token begins
            segment = np.cumsum(starts) - 1
            best = np.minimum.reduceat(ranks, np.flatnonzero(starts))[segment]
            done = best == _NO_MERGE
            done_ids.append(ids[done])
            done_owner.append(owner[done])
            at = np.flatnonzero((ranks == best) & ~done)
            at = at[np.unique(segment[at], return_index=True)[1]]  # the leftmost in each
            ids[at] = self._pair_merged[found[at]]
            keep = ~done
            keep[at + 1] = False
            at = (np.cumsum(keep) - 1)[at]
            ids, owner, ranks, found = ids[keep], owner[keep], ranks[keep], found[keep]
            changed = np.r_[at[at > 0] - 1, at]  # the pairs that now hold a merged id
            ranks[changed], found[changed] = self._pairs_at(ids, owner, changed)
        owner = np.concatenate(done_owner)
        flat = np.concatenate(done_ids)[np.argsort(owner, kind="stable")].tobytes()
        ends = (np.bincount(owner, minlength=len(pieces)).cumsum() * 8).tolist()
        return [flat[a:b] for a, b in zip([0, *ends], ends)]  # as array("q") bytes

    def _pairs_at(self, ids: np.ndarray, owner: np.ndarray, at: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """(rank, index in the _pair arrays) of each pair ids[at], ids[at + 1]; _NO_MERGE for a
        pair that no merge joins, across two pre-tokens or past the last id."""
        after = np.minimum(at + 1, len(ids) - 1)
        keys = ids[at] * self._id_span + ids[after]
        found = np.searchsorted(self._pair_keys, keys)
        ok = (self._pair_keys[found] == keys) & (owner[after] == owner[at]) & (after > at)
        return np.where(ok, self._pair_ranks[found], _NO_MERGE), found

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; byte sequences that are not valid UTF-8 become U+FFFD."""
        try:
            data = b"".join(self.vocab[i] for i in ids)
        except KeyError as err:
            raise ValueError(f"token id {err.args[0]} is not in the vocabulary "
                             f"(0..{max(self.vocab)})") from None
        return data.decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        """Write vocab.json and merges.txt (GPT-2 format: bytes shown through bytes_to_unicode)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        show = bytes_to_unicode()
        text = {i: "".join(show[b] for b in token) for i, token in self.vocab.items()}
        vocab = {text[i]: i for i in sorted(text)}
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False),
                                              encoding="utf-8")
        lines = ["#version: 0.2"] + [
            "".join(show[x] for x in a) + " " + "".join(show[x] for x in b) for a, b in self.merges]
        (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def from_files(cls, vocab_path: str | Path, merges_path: str | Path,
                   special_tokens: Iterable[str] | None = None) -> Tokenizer:
        """Load GPT-2-format vocab.json and merges.txt; ValueError or OSError names the bad file."""
        raw = {ch: b for b, ch in bytes_to_unicode().items()}

        def to_bytes(token: str) -> bytes:
            if all(ch in raw for ch in token):
                return bytes(raw[ch] for ch in token)
            return token.encode()  # an added token written literally (not through the byte map)

        try:
            entries = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{vocab_path}: not a JSON vocabulary ({err})") from None
        if not isinstance(entries, dict) or not all(isinstance(i, int) for i in entries.values()):
            raise ValueError(f"{vocab_path}: expected a JSON object mapping tokens to integer ids")
        stray = next((i for i in sorted(entries.values()) if not 0 <= i < len(entries)), None)
        if stray is not None or len(set(entries.values())) < len(entries):
            raise ValueError(f"{vocab_path}: the ids of its {len(entries)} tokens must be 0.."
                             f"{len(entries) - 1}, each once (" + (f"found id {stray})" if stray
                             is not None else "an id is given twice)"))
        vocab = {i: to_bytes(token) for token, i in entries.items()}
        merges = []
        try:
            lines = Path(merges_path).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise ValueError(f"{merges_path}: not UTF-8 text ({err})") from None
        for number, line in enumerate(lines, 1):
            if not line or line.startswith("#version"):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"{merges_path} line {number}: expected two tokens separated "
                                 f"by one space, got {line!r}")
            merges.append((to_bytes(parts[0]), to_bytes(parts[1])))
        try:
            return cls(vocab, merges, special_tokens)
        except ValueError as err:
            raise ValueError(f"{vocab_path}, {merges_path}: {err}") from None

    @classmethod
    def from_dir(cls, dataset_dir: str | Path) -> Tokenizer:
        """Load a dataset folder's tokenizer, with the special tokens its meta.json lists."""
        folder = Path(dataset_dir)
        meta_path = folder / "meta.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{meta_path}: not valid JSON ({err})") from None
        specials = meta.get("special_tokens", []) if isinstance(meta, dict) else None
        if not isinstance(specials, list) or not all(isinstance(t, str) for t in specials):
            raise ValueError(f"{meta_path}: expected a JSON object whose special_tokens is a list "
                             "of strings")
        return cls.from_files(folder / "vocab.json", folder / "merges.txt", specials)


_worker_tokenizer: Tokenizer  # set in each worker process by _init_worker


def _init_worker(vocab: dict[int, bytes], merges: list, special_tokens: list[str]) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(vocab, merges, special_tokens)


def _encode_span(args: tuple[Path, int, int]) -> array:
    path, start, end = args
    return array("q", _worker_tokenizer._encode_packed(read_text(path, start, end)))


def _batches(iterable: Iterable[str], size: int) -> Iterator[str]:
    """The strings joined into pieces of at least size characters (the last may be shorter)."""
    batch: list[str] = []
    total = 0
    for text in iterable:
        batch.append(text)
        total += len(text)
        if total >= size:
            yield "".join(batch)
            batch, total = [], 0
    if batch:
        yield "".join(batch)


def _show(token: bytes) -> str:
    return repr(token.decode("utf-8", errors="backslashreplace"))
