"""A prepared dataset folder of uniformly random token ids, for the speed benchmarks (what they
measure does not depend on the text); numpy only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def random_dataset(folder: Path, vocab_size: int, train_tokens: int = 4_000_000,
                   valid_tokens: int = 100_000) -> Path:
    """`folder` (made if missing) holding train.npy, valid.npy and the meta.json `tuner` checks."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", train_tokens), ("valid", valid_tokens)):
        np.save(folder / f"{split}.npy", rng.integers(0, vocab_size, count, dtype=np.uint16))
    (folder / "meta.json").write_text(json.dumps({
        "vocab_size": vocab_size, "dtype": "uint16", "train_tokens": train_tokens,
        "valid_tokens": valid_tokens, "special_tokens": []}))
    return folder
