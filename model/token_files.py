"""Prepared token files: memory-mapped arrays and the checks of a dataset folder against a model.

Numpy only, so that the tuner's driver checks a dataset without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.config import ConfigError

_SCAN_CHUNK = 1 << 24  # tokens per chunk when checking ids, so a huge file is never read whole


def load_tokens(path: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """Open a 1-D uint16/uint32 `.npy` token file as a read-only memory map, checking its ids."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "token file not found")
    try:
        tokens = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:  # EOFError: an empty file
        raise ConfigError(str(path), f"not a readable .npy token array ({err})") from err
    if tokens.ndim != 1 or tokens.dtype not in (np.uint16, np.uint32):
        raise ConfigError(str(path), f"expected a 1-D uint16/uint32 array, got {tokens.dtype} "
                          f"with shape {tokens.shape}")
    if vocab_size is not None:
        for start in range(0, len(tokens), _SCAN_CHUNK):
            top = int(tokens[start:start + _SCAN_CHUNK].max(initial=0))
            if top >= vocab_size:
                raise ConfigError(str(path), f"token id {top} is not below vocab_size={vocab_size}")
    return tokens


@dataclass
class Dataset:
    """A prepared dataset folder: train/valid token memmaps and its meta.json."""

    path: Path
    train: np.ndarray
    valid: np.ndarray
    meta: dict

    @classmethod
    def open(cls, folder: str | Path, vocab_size: int, context_length: int) -> Dataset:
        """Open and check a dataset folder against the model's vocabulary and context."""
        folder = Path(folder)
        if not folder.is_dir():
            found = "is a file, not a dataset folder" if folder.exists() else "not found"
            raise ConfigError("data", f"dataset folder {folder} {found}")
        meta_path = folder / "meta.json"
        meta = read_meta(meta_path)
        check_vocab(meta, vocab_size, meta_path)
        train = load_tokens(folder / "train.npy", vocab_size)
        valid = load_tokens(folder / "valid.npy", vocab_size)
        for name, tokens in (("train.npy", train), ("valid.npy", valid)):
            check_context(len(tokens), context_length, folder / name)
        return cls(folder, train, valid, meta)


def dataset_identity(meta: dict) -> dict | None:
    """What a prepared folder's content is, from its meta.json: the sha256 of its inputs and
    tokenizer, and its token counts (None for a folder without those hashes)."""
    if not isinstance(meta.get("sha256"), dict):
        return None
    return {key: meta.get(key) for key in ("sha256", "vocab_size", "train_tokens", "valid_tokens")}


def read_meta(meta_path: Path) -> dict:
    """A dataset folder's meta.json ({} when there is none); ConfigError naming the file when it
    is not a readable JSON object."""
    if not meta_path.exists():
        return {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(str(meta_path), f"not a readable JSON file ({err})") from None
    if not isinstance(meta, dict):
        raise ConfigError(str(meta_path), "expected a JSON object")
    return meta


def check_vocab(meta: dict, vocab_size: int, meta_path: Path) -> None:
    """ConfigError when the dataset's vocabulary (its meta.json) is larger than the model's."""
    size = meta.get("vocab_size", 0)
    if type(size) is not int:
        raise ConfigError(str(meta_path), f"vocab_size {size!r} is not a whole number")
    if size > vocab_size:
        raise ConfigError("model.vocab_size", f"{vocab_size} is smaller than the dataset's "
                          f"vocabulary ({meta['vocab_size']} in {meta_path})")


def check_context(tokens: int, context_length: int, path: Path) -> None:
    """ConfigError when a token file holds no more tokens than the model's context."""
    if tokens <= context_length:
        raise ConfigError("model.context_length", f"{context_length} needs at least "
                          f"{context_length + 1} tokens in {path} (a window and its next token), "
                          f"which holds {tokens}")
