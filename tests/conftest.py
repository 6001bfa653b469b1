"""Shared fixtures: the real corpora in ../shared/data and small prepared datasets built from
them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: tinystories_2MiB.txt, tinyshakespeare.txt, gpt2/."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the shared corpora must sit beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def byte_dataset(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A prepared dataset folder whose tokens are the raw bytes of Tiny Shakespeare (vocab 256)."""
    out = tmp_path_factory.mktemp("byte_dataset")
    raw = np.frombuffer((shared_data / "tinyshakespeare.txt").read_bytes(), dtype=np.uint8)
    split = int(len(raw) * 0.9)
    np.save(out / "train.npy", raw[:split].astype(np.uint16))
    np.save(out / "valid.npy", raw[split:].astype(np.uint16))
    meta = {"vocab_size": 256, "dtype": "uint16", "train_tokens": split,
            "valid_tokens": len(raw) - split, "special_tokens": []}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store with every migration applied: copy it instead of creating a
    store per test (creating one runs migrations for several seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests (whole studies) first, in their order: on two workers the quick ones then
    fill the end, instead of one worker finishing a study alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
