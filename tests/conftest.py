"""Shared fixtures: the real corpora in tests/fixtures (their sources in its README), small
prepared datasets built from them, and what the study tests share (their helpers: studies.py)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import xdist_order

CORPORA = Path(__file__).resolve().parent / "fixtures"
# The tests run `tuner` and `python` directly, not under `uv run` (which sets this, so that the
# commands they print for copying would start with `uv run`); tests that want it set it.
os.environ.pop("UV_RUN_RECURSION_DEPTH", None)
# One thread for torch and BLAS in each test process and the commands it starts (set before either
# is imported): the suite runs two processes at once on two cores (xdist), and a torch that
# spreads a tiny model's step over both cores spins on the one the other process holds (five of
# test_train's tests on two workers: 128 CPU-seconds, 16 on one thread). Trials set their own.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The tests stop commands with Ctrl-C (SIGINT). A suite a script started in the background
# inherits SIGINT ignored, which its commands would inherit in turn; a handled signal is not.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _environment_kept() -> Iterator[None]:
    """Each test leaves os.environ as it found it: an in-process `tuner.search` starts Ray in the
    worker, and Ray sets variables of its own (RAY_AUTH_MODE, RAY_CLIENT_MODE) that a `ray start`
    of a later test there would inherit."""
    saved = os.environ.copy()
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def corpora() -> Path:
    """tests/fixtures: tinystories_2MiB.txt, tinyshakespeare.txt, gpt2/{vocab.json,merges.txt}."""
    return CORPORA


@pytest.fixture(scope="session")
def byte_dataset(tmp_path_factory: pytest.TempPathFactory, corpora: Path) -> Path:
    """A prepared dataset folder whose tokens are the raw bytes of Tiny Shakespeare (vocab 256)."""
    import numpy as np

    out = tmp_path_factory.mktemp("byte_dataset")
    raw = np.frombuffer((corpora / "tinyshakespeare.txt").read_bytes(), dtype=np.uint8)
    split = int(len(raw) * 0.9)
    np.save(out / "train.npy", raw[:split].astype(np.uint16))
    np.save(out / "valid.npy", raw[split:].astype(np.uint16))
    meta = {"vocab_size": 256, "dtype": "uint16", "train_tokens": split,
            "valid_tokens": len(raw) - split, "special_tokens": []}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="session")
def tokenized(tmp_path_factory: pytest.TempPathFactory, byte_dataset: Path) -> Path:
    """byte_dataset with a byte-level tokenizer (256 single-byte tokens, no merges) beside it,
    its sha256 in meta.json as `tuner data prepare` records it (a checkpoint records it then)."""
    import shutil

    from model.tokenizer import Tokenizer
    from tuner.datasets import tokenizer_sha256

    folder = tmp_path_factory.mktemp("tokenized")
    for name in ("train.npy", "valid.npy"):
        shutil.copy(byte_dataset / name, folder / name)
    Tokenizer({i: bytes([i]) for i in range(256)}, []).save(folder)
    meta = json.loads((byte_dataset / "meta.json").read_text())
    meta["sha256"] = {"tokenizer": tokenizer_sha256(folder)}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store with every migration applied: copy it instead of creating a
    store per test (creating one runs migrations for several seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic-text dataset with a trained BPE tokenizer (vocabulary 300), so trials sample."""
    from tuner.datasets import prepare_dataset

    cache = tmp_path_factory.mktemp("search_data")
    return prepare_dataset(source="synthetic", vocab_size=300, synthetic_bytes=200_000,
                           cache_dir=cache, progress=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests (whole studies) first, dealt out to xdist's workers (xdist_order.py):
    each worker starts on studies and ends on quick tests, which the other can steal."""
    items[:] = xdist_order.deal(items, xdist_order.workers())


from s3_server import s3, s3_server  # noqa: F401 - the object-store fixtures
