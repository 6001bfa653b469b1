"""Prepared datasets, the synthetic corpus, the downloader (against a local server) and the CLI."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from time import sleep  # the real one: no_retry_pause makes time.sleep return at once

import numpy as np
import pytest

from model.tokenizer import Tokenizer
from tuner import download as download_module
from tuner.datasets import check_dataset, prepare_dataset
from tuner.download import download, tinystories
from tuner.errors import UserError
from tuner.folder_lock import folder_lock
from tuner.search.record.provenance import dataset_sha256
from tuner.synthetic import BOYS, GIRLS, generate_stories

EOT = "<|endoftext|>"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stories(tmp_path_factory: pytest.TempPathFactory, corpora: Path) -> Path:
    path = tmp_path_factory.mktemp("text") / "stories.txt"
    path.write_bytes((corpora / "tinystories_2MiB.txt").read_bytes()[:200_000])
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    return prepare_dataset(source="synthetic", vocab_size=400, synthetic_bytes=150_000,
                           cache_dir=cache, progress=False)


def decoded(folder: Path, split: str) -> str:
    return Tokenizer.from_dir(folder).decode(np.load(folder / f"{split}.npy").tolist())


# --- synthetic stories -------------------------------------------------------------------------

def test_synthetic_stories_are_seeded_sized_and_separated() -> None:
    text = generate_stories(50_000, seed=3)
    assert text == generate_stories(50_000, seed=3) != generate_stories(50_000, seed=4)
    assert 50_000 <= len(text.encode()) < 52_000 and text.isascii()
    stories = text.split(f"\n{EOT}\n")
    assert stories[-1] == "" and all(s.strip() for s in stories[:-1])


def test_synthetic_stories_are_regular() -> None:
    text = generate_stories(500_000, seed=0)
    words = Counter(re.findall(r"[A-Za-z]+", text))
    assert 150 <= len(words) <= 600  # a small vocabulary ...
    assert all(words[name] > 100 for name in GIRLS + BOYS)  # ... and a recurring cast
    stories = text.split(f"\n{EOT}\n")[:-1]
    assert len(set(stories)) > 0.95 * len(stories)  # yet the stories vary


# --- prepare_dataset ---------------------------------------------------------------------------

def test_synthetic_dataset_folder_follows_the_contract(synthetic: Path) -> None:
    meta = check_dataset(synthetic)
    assert {p.name for p in synthetic.iterdir()} == {"train.npy", "valid.npy", "vocab.json",
                                                     "merges.txt", "meta.json"}
    train, valid = np.load(synthetic / "train.npy"), np.load(synthetic / "valid.npy")
    assert train.dtype == valid.dtype == np.uint16 and meta["dtype"] == "uint16"
    assert (meta["train_tokens"], meta["valid_tokens"]) == (len(train), len(valid))
    assert meta["vocab_size"] <= 400 and meta["special_tokens"] == [EOT]
    assert meta["source"] == "synthetic" and set(meta["sha256"]) == {"input", "tokenizer"}
    assert 0.03 < len(valid) / (len(train) + len(valid)) < 0.07
    # the split falls between stories and the ids decode back to the generated text exactly
    assert decoded(synthetic, "valid").startswith(EOT)
    assert decoded(synthetic, "train") + decoded(synthetic, "valid") == generate_stories(150_000, 0)


def test_second_run_reuses_the_folder(synthetic: Path) -> None:
    stamp = (synthetic / "train.npy").stat().st_mtime_ns
    again = prepare_dataset(source="synthetic", vocab_size=400, synthetic_bytes=150_000,
                            cache_dir=synthetic.parent, progress=False)
    assert again == synthetic and (synthetic / "train.npy").stat().st_mtime_ns == stamp
    other = prepare_dataset(source="synthetic", vocab_size=400, synthetic_bytes=150_000, seed=1,
                            cache_dir=synthetic.parent, progress=False)
    assert other != synthetic


def test_preparing_again_elsewhere_gives_the_same_dataset(synthetic: Path, tmp_path: Path) -> None:
    """The same request prepared again is the same dataset, byte for byte (meta.json too), so a
    replay given it with `--data` accepts it."""
    sleep(1.1)  # a timestamp (seconds) in meta.json would differ
    again = prepare_dataset(source="synthetic", vocab_size=400, synthetic_bytes=150_000,
                            cache_dir=tmp_path, progress=False)
    assert again != synthetic and dataset_sha256(again) == dataset_sha256(synthetic)


def test_files_with_a_separate_validation_file(stories: Path, corpora: Path,
                                               tmp_path: Path) -> None:
    valid = tmp_path / "valid.txt"
    valid.write_bytes((corpora / "tinyshakespeare.txt").read_bytes()[:20_000])
    out = prepare_dataset(input=stories, valid=valid, vocab_size=500, out=tmp_path / "ds",
                          progress=False)
    assert decoded(out, "valid") == valid.read_text()
    assert decoded(out, "train") == stories.read_text()
    meta = check_dataset(out)
    assert meta["sha256"]["valid"] == hashlib.sha256(valid.read_bytes()).hexdigest()
    # a changed input is a new request: the folder is rebuilt in place
    valid.write_text("Some other validation text.\n")
    prepare_dataset(input=stories, valid=valid, vocab_size=500, out=out, progress=False)
    assert decoded(out, "valid") == "Some other validation text.\n"


def test_given_tokenizer_and_uint32_for_large_vocabularies(stories: Path, tmp_path: Path) -> None:
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({256 + i: b"\x00\x01" + i.to_bytes(3, "big") for i in range(65_400)})
    Tokenizer(vocab, [], [EOT]).save(tmp_path / "tok")
    out = prepare_dataset(input=stories, vocab_size=65_657, tokenizer=tmp_path / "tok",
                          out=tmp_path / "ds", progress=False)
    meta = check_dataset(out)
    assert meta["dtype"] == "uint32" and np.load(out / "train.npy").dtype == np.uint32
    assert "tokenizer_input" in meta["sha256"]
    with pytest.raises(UserError, match="has 65657 tokens"):
        prepare_dataset(input=stories, vocab_size=1000, tokenizer=tmp_path / "tok",
                        out=tmp_path / "ds2", progress=False)


def test_tinystories_source_uses_the_download_cache(stories: Path, tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    text = stories.read_bytes()
    (downloads / "TinyStoriesV2-GPT4-train.txt").write_bytes(text[:150_000])
    (downloads / "TinyStoriesV2-GPT4-valid.txt").write_bytes(text[150_000:])
    out = prepare_dataset(source="tinystories", vocab_size=400, cache_dir=tmp_path, progress=False)
    assert out.parent == tmp_path and out.name.startswith("tinystories-")
    assert decoded(out, "valid") == text[150_000:].decode()


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


def test_a_build_killed_midway_leaves_nothing_once_the_next_runs(stories: Path,
                                                                 tmp_path: Path) -> None:
    """SIGKILL leaves a builder's partial folder (no handler runs): the next build in that folder,
    holding its lock, removes it (for TinyStories, about a GB each)."""
    left = tmp_path / ".other.partial-99999999-deadbeef"
    left.mkdir()
    (left / "train.npy").write_bytes(b"x" * 1000)
    prepare_dataset(input=stories, vocab_size=300, out=tmp_path / "ds", progress=False)
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("content,message", [
    (b"", "the file is empty"),
    (b"fine text\n" * 100 + b"caf\xe9 latin-1\n", r"invalid UTF-8 at byte 1003"),
])
def test_bad_input_file_leaves_nothing(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(UserError, match=rf"bad.txt: .*{message}"):
        prepare_dataset(input=bad, valid=bad, vocab_size=300, out=tmp_path / "a" / "b" / "ds",
                        progress=False)
    assert os.listdir(tmp_path) == ["bad.txt"]  # nor the folders made for the dataset


def test_invalid_utf8_in_the_validation_file_leaves_nothing(stories: Path, tmp_path: Path) -> None:
    bad = tmp_path / "valid.txt"
    bad.write_bytes(b"ok\n\xff\n")
    with pytest.raises(UserError, match=r"valid.txt: invalid UTF-8 at byte 3"):
        prepare_dataset(input=stories, valid=bad, vocab_size=300, out=tmp_path / "ds",
                        progress=False)
    assert not (tmp_path / "ds").exists() and not _leftovers(tmp_path)


def test_bad_options_are_user_errors(stories: Path, tmp_path: Path) -> None:
    cases = [
        (dict(input=tmp_path / "missing.txt", vocab_size=300), "missing.txt: no such file"),
        (dict(input=tmp_path, vocab_size=300), "not a regular file"),
        (dict(input=stories, vocab_size=200), "at least 257"),
        (dict(input=stories, vocab_size=300, special_tokens=[f"<{i}>" for i in range(50)]),
         "at least 306"),
        (dict(vocab_size=300), "--input: required"),
        (dict(source="web", vocab_size=300), "--source web: unknown; use one of files, "),
        (dict(input=stories, vocab_size=300, valid_fraction=1.5), "between 0 and 1"),
        ({"input": stories, "vocab_size": 300, "special_tokens": ["<|eot|>", ""]},
         "--special-token: empty"),
        ({"input": stories, "vocab_size": 300, "special_tokens": ["$"]},  # its byte has an id
         r"--special-token '\$' is a single byte, a token already"),
        (dict(input=stories, vocab_size=300, tokenizer=tmp_path / "none"), "vocab.json"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UserError, match=message):
            prepare_dataset(out=tmp_path / "ds", progress=False, **kwargs)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="not a dataset folder"):
        prepare_dataset(input=stories, vocab_size=300, out=tmp_path / "mine", progress=False)
    (tmp_path / "mine" / "meta.json").write_text("{}")  # a project's meta.json, not a dataset's
    with pytest.raises(UserError, match="not a dataset folder"):
        prepare_dataset(input=stories, vocab_size=300, out=tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="afile is a file, not a folder; choose another --out"):
        prepare_dataset(input=stories, vocab_size=300, out=tmp_path / "afile" / "sub",
                        progress=False)
    short = tmp_path / "short.txt"
    short.write_text("<|endoftext|>hello world. This is text\n")
    with pytest.raises(UserError, match="--valid-fraction 0.99 leaves no training text"):
        prepare_dataset(input=short, vocab_size=300, valid_fraction=0.99, out=tmp_path / "ds",
                        progress=False)
    one_line = tmp_path / "one.txt"
    one_line.write_text("no line breaks and no special tokens " * 20)
    with pytest.raises(UserError, match="no story boundary"):
        prepare_dataset(input=one_line, vocab_size=300, out=tmp_path / "ds", progress=False)
    with pytest.raises(UserError, match=r"in its last 0\.01% to split"):
        prepare_dataset(input=one_line, vocab_size=300, valid_fraction=0.0001,
                        out=tmp_path / "ds", progress=False)
    utf16 = tmp_path / "utf16.txt"  # no boundary either: the encoding is what to fix first
    utf16.write_text("no line breaks and no special tokens " * 20, encoding="utf-16")
    with pytest.raises(UserError, match="utf16.txt: invalid UTF-8 at byte 0"):
        prepare_dataset(input=utf16, vocab_size=300, out=tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()


def test_a_dataset_prepared_again_elsewhere_hashes_the_same(stories: Path,
                                                            tmp_path: Path) -> None:
    """The same inputs at other paths make a folder of the same content: its hash (replay's and
    --resume's check) leaves out where they lay; the earlier hash, of meta.json whole, did not."""
    from tuner.search.record.provenance import dataset_digests, dataset_sha256

    folders = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        shutil.copy(stories, tmp_path / name / "stories.txt")
        folders.append(prepare_dataset(input=tmp_path / name / "stories.txt", vocab_size=300,
                                       out=tmp_path / f"{name}-ds", progress=False))
    metas = [json.loads((folder / "meta.json").read_text()) for folder in folders]
    assert metas[0]["inputs"] != metas[1]["inputs"]
    assert dataset_sha256(folders[0]) == dataset_sha256(folders[1])
    assert dataset_digests(folders[0])[1] != dataset_digests(folders[1])[1]


def test_tokenizer_whose_merges_name_unknown_tokens(stories: Path, synthetic: Path,
                                                   tmp_path: Path) -> None:
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.json").write_bytes((synthetic / "vocab.json").read_bytes())
    (tok / "merges.txt").write_text((synthetic / "merges.txt").read_text() + "Ġqq Ġzz\n")
    with pytest.raises(UserError, match=r"merges.txt: merge \d+ .*not in the vocabulary"):
        prepare_dataset(input=stories, vocab_size=400, tokenizer=tok, out=tmp_path / "ds",
                        progress=False)


@pytest.mark.parametrize("damage,message", [
    (lambda d, m: m.update(train_tokens=m["train_tokens"] + 1), "train.npy: .* meta.json says"),
    (lambda d, m: m.update(dtype="uint32"), "train.npy: a 1-D uint16 array, but meta.json says"),
    (lambda d, m: m.update(vocab_size=10), "train.npy: token id .* not below vocab_size=10"),
    (lambda d, m: np.save(d / "train.npy", np.load(d / "train.npy").astype(">u2")),
     "train.npy: a 1-D big-endian uint16 array, but meta.json says 1-D uint16"),
    (lambda d, m: m.update(vocab_size=70000), "meta.json: vocab_size 70000 does not fit .* uint16"),
    (lambda d, m: m.update(vocab_size=m["vocab_size"] + 10),
     "meta.json: vocab_size .*, but its tokenizer has .* tokens"),
    (lambda d, m: (d / "valid.npy").unlink(), "valid.npy: missing"),
    (lambda d, m: (d / "merges.txt").unlink(), r"copy/merges.txt: missing; prepare the folder"),
    (lambda d, m: (d / "train.npy").write_bytes(b""), "train.npy: not a readable .npy array"),
    (lambda d, m: (d / "meta.json").write_text("{"), "meta.json: unreadable"),
    (lambda d, m: m.pop("valid_tokens"), "meta.json: valid_tokens missing or of the wrong type"),
    (lambda d, m: m.update(vocab_size="512", sha256=5),
     "meta.json: vocab_size, sha256 missing or of the wrong type"),
    (lambda d, m: (d / "merges.txt").write_text("#version: 0.2\n"), "tokenizer files do not match"),
    (lambda d, m: _as_int64(d, m), "meta.json: dtype int64, but the trainer reads uint16 or"),
    # a folder whose meta.json predates the tokenizer's sha256: the files are still read
    (lambda d, m: (m["sha256"].pop("tokenizer"), (d / "merges.txt").write_text("one\n")),
     "merges.txt line 1: expected two tokens"),
    (lambda d, m: (m["sha256"].pop("tokenizer"), (d / "merges.txt").write_bytes(b"\xaa\n")),
     "merges.txt: not UTF-8"),
    (lambda d, m: (m["sha256"].pop("tokenizer"), m.update(special_tokens=5)),
     "meta.json: expected a JSON object whose special_tokens is a list"),
])
def test_check_dataset_names_the_inconsistent_file(synthetic: Path, tmp_path: Path, damage,
                                                   message: str) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in synthetic.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    meta = json.loads((folder / "meta.json").read_text())
    damage(folder, meta)
    if (folder / "meta.json").read_text() != "{":
        (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=message):
        check_dataset(folder)


def test_check_dataset_tells_a_file_from_a_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "my.txt").write_text("text")
    with pytest.raises(UserError, match=r"my.txt: a file, not a dataset folder; create one"):
        check_dataset(tmp_path / "my.txt")
    with pytest.raises(UserError, match=r"none: no such dataset folder; create one"):
        check_dataset(tmp_path / "none")


def test_a_study_checks_its_dataset_without_importing_torch(synthetic: Path) -> None:
    # The driver of `tuner search` runs no model: importing torch would cost it seconds
    code = ("import sys; from pathlib import Path; import tuner.cli.search, "
            "tuner.search.run.runner, tuner.search.record.tracking, tuner.search.run.console, "
            "tuner.search.state.recovery; "
            "from tuner.space.dataset_fit import check_study_dataset; "
            "from tuner.space import load_study; "
            f"check_study_dataset(load_study(Path({str(REPO / 'search_spaces/quickstart.yaml')!r})"
            f"), Path({str(synthetic)!r})); print(sorted(m for m in sys.modules if m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _as_int64(folder: Path, meta: dict) -> None:
    """Token arrays of a dtype the trainer does not read, consistent with meta.json."""
    for split in ("train", "valid"):
        np.save(folder / f"{split}.npy", np.load(folder / f"{split}.npy").astype(np.int64))
    meta["dtype"] = "int64"


# --- downloader against a local HTTP server -----------------------------------------------------

class Server:
    """Serves one file on 127.0.0.1 with Range support; can cut a response short or lie."""

    def __init__(self, data: bytes) -> None:
        self.data, self.requests = data, []
        self.cut_next: int | None = None  # bytes to send before dropping the next response
        self.ranges = True
        self.hold_after: int | None = None  # bytes to send before waiting for `release`
        self.release = threading.Event()
        self.etag = self.linked_etag = '"%s"' % hashlib.sha256(data).hexdigest()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not self.path.endswith(".txt"):
                    self.send_error(404)
                    return
                if self.path.startswith("/redirect/"):  # like the hub: sha256 in the redirect
                    self.send_response(302)
                    self.send_header("Location", self.path.removeprefix("/redirect"))
                    self.send_header("X-Linked-Etag", server.linked_etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                server.requests.append(self.headers.get("Range"))
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and server.ranges:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(server.data) - 1}/{len(server.data)}")
                else:
                    self.send_response(200)
                body = server.data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", server.etag)
                self.end_headers()
                if server.cut_next is not None:
                    body, server.cut_next = body[:server.cut_next], None
                    self.close_connection = True
                if server.hold_after is not None:
                    held, server.hold_after = server.hold_after, None
                    self.wfile.write(body[:held])
                    self.wfile.flush()
                    server.release.wait(timeout=120)
                    body = body[held:]
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/dir/TinyStoriesV2-GPT4-valid.txt"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = Server(os.urandom(3_000_000))
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(autouse=True)
def no_retry_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_module.time, "sleep", lambda _s: None)


def test_download_resumes_an_interrupted_transfer(server: Server, tmp_path: Path) -> None:
    server.cut_next = 1_000_000
    path = download(server.url, tmp_path, progress=False)
    assert path.read_bytes() == server.data and path.name == "TinyStoriesV2-GPT4-valid.txt"
    assert server.requests == [None, "bytes=1000000-"]
    assert download(server.url, tmp_path, progress=False) == path  # cached: no new request
    assert len(server.requests) == 2


def test_download_continues_a_part_file_from_an_earlier_run(server: Server, tmp_path: Path) -> None:
    (tmp_path / "TinyStoriesV2-GPT4-valid.txt.part").write_bytes(server.data[:123])
    assert download(server.url, tmp_path, progress=False).read_bytes() == server.data
    assert server.requests == ["bytes=123-"]


def test_download_starts_over_when_the_server_ignores_ranges(server: Server,
                                                            tmp_path: Path) -> None:
    server.ranges = False
    (tmp_path / "TinyStoriesV2-GPT4-valid.txt.part").write_bytes(b"stale bytes")
    assert download(server.url, tmp_path, progress=False).read_bytes() == server.data


def test_download_checks_checksum_and_size(server: Server, tmp_path: Path) -> None:
    server.etag = '"%s"' % ("0" * 64)  # the published sha256 disagrees with the bytes
    with pytest.raises(UserError, match="sha256 .* is not the expected 0000"):
        download(server.url, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
    server.etag = '"not-a-sha"'
    with pytest.raises(UserError, match="expected 5"):
        download(server.url, tmp_path, size=5, progress=False)
    with pytest.raises(UserError, match="is not the expected"):
        download(server.url, tmp_path, sha256="1" * 64, progress=False)
    assert download(server.url, tmp_path, sha256=hashlib.sha256(server.data).hexdigest(),
                    size=len(server.data), progress=False).read_bytes() == server.data


def test_a_download_that_never_starts_leaves_nothing(tmp_path: Path) -> None:
    """Nothing listens there: no part file to resume, so no folder is left and none is named."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError, match="after 1 attempts .*; run again to retry$"):
        download(f"http://127.0.0.1:{port}/f.txt", tmp_path / "cache" / "downloads", attempts=1,
                 timeout=5, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_checks_the_sha256_published_with_a_redirect(server: Server,
                                                              tmp_path: Path) -> None:
    server.etag = '"not-a-sha"'
    server.linked_etag = '"%s"' % ("0" * 64)
    url = server.url.replace("/dir/", "/redirect/dir/")
    with pytest.raises(UserError, match="is not the expected 0000"):
        download(url, tmp_path, progress=False)
    server.linked_etag = '"%s"' % hashlib.sha256(server.data).hexdigest()
    assert download(url, tmp_path, progress=False).read_bytes() == server.data


def test_download_gives_up_with_a_user_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="HTTP 404"):
        download(server.url + ".missing", tmp_path, progress=False)
    port = server.httpd.server_port
    server.httpd.shutdown()
    server.httpd.server_close()
    with pytest.raises(UserError, match="failed after 2 attempts"):
        download(f"http://127.0.0.1:{port}/x.txt", tmp_path, attempts=2, progress=False)


def test_a_waiter_locks_the_folder_made_again_when_the_holder_removed_its_own(
        tmp_path: Path) -> None:
    """The holder failed and removed the folders it had made: the waiter makes them again and
    locks those, not the removed folder (where it could write nothing)."""
    import fcntl

    folder = tmp_path / "made" / "data"
    folder.mkdir(parents=True)
    held = os.open(folder, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    said: list[str] = []

    def waiter() -> None:
        with folder_lock(folder, lambda: said.append("waiting")):
            (folder / "built").write_text("ok")

    thread = threading.Thread(target=waiter)
    thread.start()
    while not said:
        sleep(0.01)
    folder.rmdir()
    folder.parent.rmdir()
    os.close(held)
    thread.join(timeout=30)
    assert said == ["waiting"] and (folder / "built").read_text() == "ok"


def test_a_second_download_waits_for_the_first_and_reuses_its_file(server: Server,
                                                                  tmp_path: Path) -> None:
    """Two studies downloading one file at once: the second waits (the first is held mid-way by
    the server), then takes the first's file, not appending to its part file."""
    fetch = ("import sys; from pathlib import Path; from tuner.download import download; "
             "print(download(sys.argv[1], Path(sys.argv[2]), progress=False))")
    server.hold_after = 1_000_000
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", fetch, server.url, str(tmp_path)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start()
    while not (tmp_path / "TinyStoriesV2-GPT4-valid.txt.part").exists() and first.poll() is None:
        sleep(0.01)
    second = start()
    try:
        said = second.stderr.readline()  # "" had it not waited: it ended instead
        assert said == f"waiting for another process downloading into {tmp_path.resolve()}\n"
    finally:
        server.release.set()
    for process in (first, second):
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert out.strip() == str(tmp_path / "TinyStoriesV2-GPT4-valid.txt")
    assert (tmp_path / "TinyStoriesV2-GPT4-valid.txt").read_bytes() == server.data
    assert server.requests == [None] and os.listdir(tmp_path) == ["TinyStoriesV2-GPT4-valid.txt"]


def test_tinystories_downloads_both_splits(server: Server, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_module, "TINYSTORIES_URL", server.url.rsplit("/", 1)[0] + "/")
    files = tinystories(tmp_path, progress=False)
    assert sorted(files) == ["train", "valid"]
    assert all(p.read_bytes() == server.data for p in files.values())


# --- the command line ---------------------------------------------------------------------------

def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tuner", "data", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_prepares_and_checks(tmp_path: Path) -> None:
    done = run_cli("prepare", "--source", "synthetic", "--synthetic-bytes", "100000",
                   "--vocab-size", "300", "--out", "ds", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout and check_dataset(tmp_path / "ds")["vocab_size"] <= 300
    checked = run_cli("check", "ds", cwd=tmp_path)
    assert checked.returncode == 0 and "valid tokens" in checked.stdout


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["ctrl-c", "sigterm", "sighup"])
def test_cli_ctrl_c_says_aborted_and_leaves_nothing(tmp_path: Path, stop: signal.Signals) -> None:
    """Ctrl-C (or `kill`, a scheduler's time limit, a closed terminal) while the dataset is
    built: "aborted", exit 130, and no folder, not even a partial one (Typer on its own would
    exit 130 without a word; Python on SIGTERM or SIGHUP would leave the partial folder)."""
    cli = subprocess.Popen(
        [sys.executable, "-m", "tuner", "data", "prepare", "--source", "synthetic",
         "--synthetic-bytes", "30000000", "--vocab-size", "300", "--out", "ds"], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    while not list(tmp_path.glob(".ds.partial-*")) and cli.poll() is None:
        sleep(0.01)  # the real one (no_retry_pause stubs time.sleep)
    cli.send_signal(stop)
    out, err = cli.communicate(timeout=120)
    assert cli.returncode == 130, out + err
    assert err.splitlines()[-1] == "aborted"
    assert list(tmp_path.iterdir()) == []


def test_cli_ctrl_c_while_the_commands_import_says_aborted(tmp_path: Path) -> None:
    """Ctrl-C in the half second the command modules take to import (here, raised as a command
    module is looked up) ends as at any other moment: "aborted", exit 130, no traceback."""
    script = ("import sys\n"
              "class CtrlC:\n"
              "    def find_spec(self, name, *_):\n"
              "        if name == 'tuner.cli.data':\n"
              "            raise KeyboardInterrupt\n"
              "sys.meta_path.insert(0, CtrlC())\n"
              "from tuner.cli import main\n"
              "sys.argv = ['tuner', 'data', 'prepare', '--source', 'synthetic', '--out', 'ds']\n"
              "main()\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 130 and done.stderr.strip() == "aborted", done.stderr
    assert list(tmp_path.iterdir()) == []


def _prepare_cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuner", "data", "prepare", *args], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_second_preparation_waits_for_the_first_and_reuses_its_folder(tmp_path: Path) -> None:
    """Two studies preparing one corpus at once: the second waits while the first builds (held
    there with SIGSTOP), then reuses its folder, so no reader ever sees it half replaced."""
    args = ("--source", "synthetic", "--synthetic-bytes", "3000000", "--vocab-size", "300",
            "--out", "ds", "--no-progress")
    first = _prepare_cli(*args, cwd=tmp_path)
    while not list(tmp_path.glob(".ds.partial-*")) and first.poll() is None:
        sleep(0.01)
    first.send_signal(signal.SIGSTOP)
    second = _prepare_cli(*args, cwd=tmp_path)
    try:
        said = second.stderr.readline()  # "" had it not waited: it ended instead
        folder = tmp_path.resolve()
        assert said == f"waiting for another process preparing a dataset in {folder}\n"
        assert second.poll() is None
    finally:
        first.send_signal(signal.SIGCONT)
    out_first, err_first = first.communicate(timeout=120)
    out_second, err_second = second.communicate(timeout=120)
    assert (first.returncode, second.returncode) == (0, 0), err_first + err_second
    assert out_first == out_second and "train" in out_first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    built = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert check_dataset(tmp_path / "ds") == built


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    done = run_cli("prepare", "--input", "nope.txt", "--vocab-size", "300", "--out", "ds",
                   cwd=tmp_path)
    assert done.returncode == 2
    assert "nope.txt: no such file" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    both = run_cli("prepare", "--input", "a", "--valid", "b", "--valid-fraction", "0.1",
                   "--vocab-size", "300", cwd=tmp_path)
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_an_input_that_is_not_a_regular_file_exits_2_unread(tmp_path: Path) -> None:
    """A FIFO would wait for ever for a writer and /dev/zero never end: refused before reading
    (within a time limit, so that a regression fails here)."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "story.txt").write_text("Once upon a time there was a cat.\n" * 300)
    for flags, named in ((["--input", "fifo"], "fifo"),
                         (["--input", "story.txt", "--valid", "/dev/zero"], "/dev/zero")):
        done = run_cli("prepare", *flags, "--vocab-size", "300", "--out", "ds", "--no-progress",
                       cwd=tmp_path, timeout=60)
        assert done.returncode == 2 and f"{named}: not a regular file" in done.stderr, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["fifo", "story.txt"]


def test_a_text_of_special_tokens_alone_exits_2_and_leaves_nothing(tmp_path: Path) -> None:
    """It was made into a dataset of one id (with line breaks, of two: a special token's and a
    line break's), which a model learns nothing from."""
    (tmp_path / "story.txt").write_text("Once upon a time there was a cat.\n" * 300)
    (tmp_path / "lines.txt").write_text("<|endoftext|>\n" * 2000)
    (tmp_path / "bare.txt").write_text("<|endoftext|>" * 2000)
    for flags, what in ((["--input", "lines.txt"], "one token, '\\n', repeated (special tokens "
                                                   "aside)"),
                        (["--input", "bare.txt", "--valid", "story.txt"], "special tokens alone")):
        done = run_cli("prepare", *flags, "--vocab-size", "300", "--out", "a/ds", "--no-progress",
                       cwd=tmp_path)
        assert done.returncode == 2
        assert " ".join(done.stderr.split()) == (f"error: {flags[1]}: a model learns nothing from "
                                                 f"its training text, {what}; name a file with "
                                                 "text in it")
    assert sorted(os.listdir(tmp_path)) == ["bare.txt", "lines.txt", "story.txt"]


def test_an_out_that_cannot_be_made_is_named_as_given(tmp_path: Path) -> None:
    (tmp_path / "story.txt").write_text("Once upon a time there was a cat.\n" * 300)
    done = run_cli("prepare", "--input", "story.txt", "--vocab-size", "260", "--out", "/proc/ds",
                   "--no-progress", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: /proc/ds: cannot be written (No such file or directory)"


def test_a_vocabulary_the_text_cannot_fill_is_warned_of(tmp_path: Path) -> None:
    """BPE stops where no pair is left to merge: the folder is made, smaller than asked, and
    the command says so rather than leaving a study's vocab_size to tell."""
    (tmp_path / "story.txt").write_text("Once upon a time there was a cat.\n" * 300)
    done = run_cli("prepare", "--input", "story.txt", "--vocab-size", "5000", "--out", "ds",
                   "--no-progress", cwd=tmp_path)
    made = check_dataset(tmp_path / "ds")["vocab_size"]
    assert done.returncode == 0 and made < 5000, done.stderr
    assert done.stderr == (f"warning: the vocabulary has {made:,} tokens, not the 5,000 of "
                           "--vocab-size: no pair of tokens was left to merge in the training "
                           "text\n")
