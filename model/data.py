"""Batches of token windows: random training batches and a fixed validation set."""

from __future__ import annotations

import numpy as np
import torch


class DeviceError(RuntimeError, ValueError):
    """An unknown or unavailable device: a RuntimeError, as torch raises for one, and a ValueError,
    as this trainer raised before."""


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise DeviceError(f"unknown device {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r} requested but only {torch.cuda.device_count()} "
                          "CUDA devices are visible")
    return dev


def _windows(tokens: np.ndarray, starts: np.ndarray, context_length: int,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([np.asarray(tokens[s:s + context_length + 1], dtype=np.int64) for s in starts])
    batch = torch.from_numpy(rows)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    else:
        batch = batch.to(device)
    return batch[:, :-1], batch[:, 1:]


def get_batch(tokens: np.ndarray, batch_size: int, context_length: int,
              device: str | torch.device, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `batch_size` windows uniformly; y is x shifted by one token. Unknown devices raise."""
    dev = _device(device)
    high = len(tokens) - context_length
    if high < 1:
        raise ValueError(f"context_length={context_length} needs more than {len(tokens)} tokens")
    starts = torch.randint(0, high, (batch_size,), generator=generator).numpy()
    return _windows(tokens, starts, context_length, dev)


def validation_windows(tokens: np.ndarray, context_length: int, count: int,
                       device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seed-independent set of `count` evenly spaced windows: every trial sees the same."""
    high = len(tokens) - context_length - 1
    starts = np.unique(np.linspace(0, max(high, 0), count).astype(np.int64))
    return _windows(tokens, starts, context_length, _device(device))
