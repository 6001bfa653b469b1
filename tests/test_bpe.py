"""BPE training: a naive reference agrees, tie-breaking, special tokens, chunking, bad input."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from model import bpe
from model.bpe import PRETOKEN_RE, count_pretokens, find_cuts, train_bpe

REPO = Path(__file__).resolve().parents[1]
EOT = "<|endoftext|>"


def naive_bpe(text: str, vocab_size: int, specials: list[str]) -> tuple[dict, list]:
    """The specification, written plainly: recount every pair after every merge."""
    parts = [text]
    for special in specials:
        parts = [piece for part in parts for piece in part.split(special)]
    words = Counter(tuple(bytes([b]) for b in tok.encode())
                    for part in parts for tok in PRETOKEN_RE.findall(part))
    vocab = {i: s.encode() for i, s in enumerate(specials)}
    vocab.update({len(specials) + b: bytes([b]) for b in range(256)})
    merges = []
    while len(vocab) < vocab_size:
        pairs: Counter = Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        vocab[len(vocab)] = best[0] + best[1]
        merged: Counter = Counter()
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    return vocab, merges


@pytest.fixture(scope="module")
def stories_slice(tmp_path_factory: pytest.TempPathFactory, corpora: Path) -> Path:
    path = tmp_path_factory.mktemp("bpe") / "stories.txt"
    path.write_bytes((corpora / "tinystories_2MiB.txt").read_bytes()[:40_000])
    return path


def test_matches_the_naive_reference(stories_slice: Path) -> None:
    vocab, merges = train_bpe(stories_slice, 500, [EOT])
    ref_vocab, ref_merges = naive_bpe(stories_slice.read_text(), 500, [EOT])
    assert merges == ref_merges
    assert vocab == ref_vocab


def test_vocabulary_layout_specials_then_bytes_then_merges(stories_slice: Path) -> None:
    vocab, merges = train_bpe(stories_slice, 300, [EOT, "<|pad|>"])
    assert len(vocab) == 300 and len(merges) == 300 - 258
    assert vocab[0] == EOT.encode() and vocab[1] == b"<|pad|>"
    assert [vocab[2 + b] for b in range(256)] == [bytes([b]) for b in range(256)]
    assert [vocab[258 + i] for i in range(len(merges))] == [a + b for a, b in merges]


def test_ties_go_to_the_lexicographically_greatest_pair(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("abcd")  # ab, bc and cd each occur once
    _, merges = train_bpe(path, 257, [])
    assert merges == [(b"c", b"d")]
    path.write_text("ab ab zy")  # "ab" twice; then " ab", " z" and "zy" once each
    _, merges = train_bpe(path, 258, [])
    assert merges == [(b"a", b"b"), (b"z", b"y")]


def test_special_tokens_split_the_text_and_are_never_merged(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text(f"x{EOT}x{EOT}" * 50 + "hello")
    vocab, merges = train_bpe(path, 300, [EOT])
    assert all(b"<|" not in a + b and b"x<" not in a + b and b">x" not in a + b
               for a, b in merges)
    assert list(vocab.values()).count(EOT.encode()) == 1


def test_pairs_are_counted_only_inside_pre_tokens(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("a b " * 100)  # pre-tokens "a", " b", " a", ...: "a " and "b " never occur
    _, merges = train_bpe(path, 260, [])
    assert merges == [(b" ", b"b"), (b" ", b"a")]  # then no pair is left: training stops early


def test_parallel_counting_equals_one_process(monkeypatch: pytest.MonkeyPatch,
                                              corpora: Path) -> None:
    path = corpora / "tinystories_2MiB.txt"
    single = count_pretokens(path, [EOT], end=600_000, workers=1)
    monkeypatch.setattr(bpe, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(bpe, "CHUNK_BYTES", 100_000)
    assert count_pretokens(path, [EOT], end=600_000, workers=2) == single


@pytest.mark.parametrize("stop", ["ctrl-c", "consumer"])
def test_the_worker_pool_stops_at_once_even_while_workers_send_results(stop: str) -> None:
    """Ctrl-C reaches the whole process group, and a consumer may stop early: either way the
    pool stops while workers are sending results. A worker stopped halfway through sending one
    would leave the pool waiting for the rest for ever; the command must end at once."""
    script = ("import sys, time\n"
              "from model.bpe import parallel_map\n"
              "results = parallel_map(bytes, [20_000_000] * 10_000, 2)\n"
              "try:\n"
              "    next(results)\n"
              "    print('started', flush=True)\n"
              "    time.sleep(0.3 if sys.argv[1] == 'consumer' else 60)  # workers busy sending\n"
              "    results.close()\n"
              "except KeyboardInterrupt:\n"
              "    raise SystemExit(130)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, stop], cwd=REPO,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline() == "started\n"
        if stop == "ctrl-c":
            time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == (130 if stop == "ctrl-c" else 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_ctrl_c_another_thread_takes_waits_until_the_pool_has_started() -> None:
    """A Ctrl-C that another thread takes (a progress bar's: the held mask is the main
    thread's) while the pool starts is raised once it has started, not halfway through: a
    forkserver worker then read what its pool sent after the command ended, with a traceback."""
    waiting = threading.Event()
    other = threading.Thread(target=waiting.wait)  # its mask lets SIGINT in
    other.start()
    reached_the_end = False
    try:
        with pytest.raises(KeyboardInterrupt):
            with bpe._ctrl_c_held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # Python would raise it in the main thread by now
                reached_the_end = True
        assert reached_the_end
    finally:
        waiting.set()
        other.join()


@pytest.mark.parametrize("name,specials,crlf", [("tinystories_2MiB.txt", [EOT], False),
                                                ("tinystories_2MiB.txt", [EOT], True),
                                                ("tinyshakespeare.txt", [], False),
                                                ("tinyshakespeare.txt", [], True)])
def test_chunks_cut_where_pre_tokens_do_not_change(corpora: Path, tmp_path: Path, name: str,
                                                   specials: list[str], crlf: bool) -> None:
    """Line breaks (LF or CRLF: cut between its CR and LF) are cut points without specials."""
    path = corpora / name
    if crlf:
        path = tmp_path / name
        path.write_bytes((corpora / name).read_bytes().replace(b"\n", b"\r\n"))
    cuts = find_cuts(path, specials, 0, 300_000, chunk_bytes=7_000)
    assert len(cuts) > 30 and cuts[0] == 0 and cuts[-1] == 300_000
    data = path.read_bytes()
    whole = bpe.count_text(data[:300_000].decode(), bpe.special_pattern(specials))
    pieces = Counter()
    for a, b in zip(cuts, cuts[1:]):
        pieces.update(bpe.count_text(data[a:b].decode(), bpe.special_pattern(specials)))
    assert pieces == whole


def test_overlapping_special_tokens_are_not_cut_points(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"ab" * 1000)  # no line breaks, and "<a>"/"<a><a>" overlap: no safe cut
    assert find_cuts(path, ["<a>", "<a><a>"], 0, 2000, chunk_bytes=100) == [0, 2000]


def test_ascii_fast_path_splits_like_the_gpt2_pattern(corpora: Path) -> None:
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(128)] + list("  \n\n'sltvedmr") * 4
    samples = ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(3000)]
    samples.append((corpora / "tinyshakespeare.txt").read_text())
    for text in samples:
        assert bpe.ASCII_PRETOKEN_RE.findall(text) == PRETOKEN_RE.findall(text), repr(text)
    assert bpe.pretokenize("café 'll") == PRETOKEN_RE.findall("café 'll")


def test_bad_input_raises_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        train_bpe(empty, 300, [])
    text = tmp_path / "t.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="at least 258"):
        train_bpe(text, 257, ["<|a|>", "<|b|>"])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello world \xff\xfe more")
    with pytest.raises(ValueError, match=r"bad.txt: invalid UTF-8 at byte 12"):
        train_bpe(bad, 300, [])
    with pytest.raises(FileNotFoundError):
        train_bpe(tmp_path / "missing.txt", 300, [])
    with pytest.raises(ValueError, match="a special token is empty"):
        train_bpe(text, 300, ["<|a|>", ""])
