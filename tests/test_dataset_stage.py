"""A prepared dataset staged under a storage URI and fetched into a node's cache (tuner.dataset_stage):
real files through pyarrow's LocalFileSystem, the storage and the cache in folders that share no
path."""

from __future__ import annotations

import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tuner.dataset_stage import MANIFEST, fetch, stage_for_trials
from tuner.datasets import DATASET_FILES
from tuner.errors import UserError
from tuner.folder_lock import folder_lock
from tuner.search.record.provenance import dataset_sha256


def _staged(tmp_path: Path, dataset: Path) -> tuple[str, Path]:
    """The dataset staged under tmp_path/storage: its location URI and the staged folder."""
    storage = tmp_path / "storage"
    location = stage_for_trials(dataset, storage.as_uri())
    return location, storage / "datasets" / dataset_sha256(dataset)


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir() if p.name in DATASET_FILES)
    return names == sorted(p.name for p in b.iterdir() if p.name in DATASET_FILES) and all(
        (a / name).read_bytes() == (b / name).read_bytes() for name in names)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_staged_once_and_fetched_byte_for_byte(tmp_path: Path, tokenized: Path) -> None:
    """The prepared folder goes to <storage>/datasets/<its sha256>, its manifest beside it; a node
    fetches the same bytes; staging it again (a plain path names the same storage) writes
    nothing, unless its manifest is gone."""
    location, staged = _staged(tmp_path, tokenized)
    assert location == f"{(tmp_path / 'storage').as_uri()}/datasets/{dataset_sha256(tokenized)}"
    assert _same_files(tokenized, staged) and (staged / MANIFEST).is_file()
    written = {p.name: p.stat().st_mtime_ns for p in staged.iterdir()}
    told: list[str] = []
    assert stage_for_trials(tokenized, str(tmp_path / "storage"), told.append) == location
    assert {p.name: p.stat().st_mtime_ns for p in staged.iterdir()} == written and told == []

    said: list[str] = []
    local = fetch(location, tmp_path / "cache", say=said.append)
    assert local == tmp_path / "cache" / dataset_sha256(tokenized)
    assert _same_files(tokenized, local) and len(said) == 1 and said[0].startswith("fetching")
    assert fetch(location, tmp_path / "cache", say=said.append) == local and len(said) == 1

    (staged / MANIFEST).unlink()
    stage_for_trials(tokenized, location.rsplit("/datasets/", 1)[0], told.append)
    size = sum(p.stat().st_size for p in tokenized.iterdir() if p.name in DATASET_FILES)
    assert told == [f"uploading the dataset ({size:,} bytes) to {location}"]
    assert (staged / MANIFEST).is_file()
    assert (staged / "train.npy").stat().st_mtime_ns != written["train.npy"]


def test_a_damaged_cached_copy_is_fetched_again(tmp_path: Path, tokenized: Path) -> None:
    """A cached file whose bytes changed, or that is gone, is found by its sha256 and the copy
    fetched again; a half-written fetch a killed process left is removed."""
    location, _ = _staged(tmp_path, tokenized)
    local = fetch(location, tmp_path / "cache")
    _flip_a_byte(local / "train.npy")
    left = tmp_path / "cache" / f".{local.name}.partial-1-abcd"
    left.mkdir()
    said: list[str] = []
    assert fetch(location, tmp_path / "cache", say=said.append) == local
    assert said[0] == (f"{local / 'train.npy'}: differs from {location}/{MANIFEST}: fetching "
                       "the dataset again")
    assert _same_files(tokenized, local) and not left.exists()
    (local / "vocab.json").unlink()
    fetch(location, tmp_path / "cache")
    assert _same_files(tokenized, local)


@pytest.mark.parametrize("damage", ["changed", "missing", "manifest"])
def test_a_damaged_staged_copy_is_named_and_nothing_cached(tmp_path: Path, tokenized: Path,
                                                           damage: str) -> None:
    """A staged file that differs from its manifest, one that is missing, or no manifest: one
    UserError naming that file, and nothing in the cache that looks like a dataset."""
    location, staged = _staged(tmp_path, tokenized)
    if damage == "changed":
        _flip_a_byte(staged / "train.npy")
        named, words = "train.npy", "differs from its manifest"
    elif damage == "missing":
        (staged / "valid.npy").unlink()
        named, words = "valid.npy", "missing from the staged dataset"
    else:
        (staged / MANIFEST).unlink()
        named, words = MANIFEST, "missing: no dataset is staged there"
    with pytest.raises(UserError) as caught:
        fetch(location, tmp_path / "cache")
    assert str(caught.value).startswith(f"{location}/{named}: {words}")
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir())


FETCHER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tuner.dataset_stage import fetch

    path = fetch(sys.argv[1], Path(sys.argv[2]), say=lambda line: print(line, flush=True))
    print("fetched into", path, flush=True)
""")


def _first_line(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The process's first line of output (failing the test if none comes)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output from the fetching process in {timeout} s"
    return proc.stdout.readline()


def test_two_processes_fetching_at_once_fetch_once(tmp_path: Path, tokenized: Path) -> None:
    """Two trials of a node that fetch the same dataset at once: one downloads, the other waits
    and uses its copy."""
    location, _ = _staged(tmp_path, tokenized)
    cache = tmp_path / "cache"
    with folder_lock(cache, lambda: None):  # both start while the cache is held
        procs = [subprocess.Popen([sys.executable, "-c", FETCHER, location, str(cache)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        firsts = [_first_line(proc) for proc in procs]
        time.sleep(0.2)  # not needed for the outcome: both are waiting on the lock already
    assert all(line.startswith("waiting for another process") for line in firsts), firsts
    lines = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        lines += out.splitlines()
    assert sum(line.startswith("fetching") for line in lines) == 1, lines
    assert lines.count(f"fetched into {cache / dataset_sha256(tokenized)}") == 2, lines
    assert _same_files(tokenized, cache / dataset_sha256(tokenized))
