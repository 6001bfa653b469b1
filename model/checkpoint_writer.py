"""Checkpoints written off the training thread: the state is copied to host memory (pinned, on a
GPU), then written, fsynced and renamed into place on a background thread, one write at a time.
The training thread pays for the copy alone, and a checkpoint counts only once its file is
durable (`wait`)."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import write_checkpoint


class CheckpointWriter:
    """Writes checkpoints into `folder` in the background; `blocked_s` is the training thread's
    time spent on them (copies and waits)."""

    def __init__(self, folder: str | Path, device: torch.device) -> None:
        self.folder, self._on_gpu = Path(folder), device.type == "cuda"
        self.blocked_s = 0.0
        self._buffers: dict[tuple, torch.Tensor] = {}  # reused: a copy into them never allocates
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._write: Future[Path] | None = None

    @property
    def busy(self) -> bool:
        """Whether a write is still on its way to the disk."""
        return self._write is not None and not self._write.done()

    def start(self, state: dict[str, Any]) -> None:
        """Copy `state` (live tensors) to host memory and write it in the background, after the
        write before it; training may change the tensors once this returns."""
        self.wait()  # the buffers are that write's until it ends
        begin = time.perf_counter()
        copied = torch.cuda.Event() if self._on_gpu else None
        snapshot = _host_copy(state, self._buffers, ())
        if copied is not None:
            copied.record()  # the copies are queued on the training stream: wait for them there
        self._write = self._pool.submit(self._durable, snapshot, copied)
        self.blocked_s += time.perf_counter() - begin

    def wait(self) -> Path | None:
        """Block until the last write is durable; its file (None: nothing written). A write that
        failed (a full disk) raises its error here, on the training thread."""
        if self._write is None:
            return None
        begin = time.perf_counter()
        try:
            return self._write.result()
        finally:
            self.blocked_s += time.perf_counter() - begin

    def close(self) -> None:
        """Let the last write finish (a file is never left half-written), then stop the thread."""
        self._pool.shutdown(wait=True)

    def _durable(self, snapshot: dict[str, Any], copied: Any) -> Path:
        if copied is not None:
            copied.synchronize()
        return write_checkpoint(snapshot, self.folder)


def _host_copy(value: Any, buffers: dict[tuple, torch.Tensor], key: tuple) -> Any:
    """`value` with each tensor copied into a host buffer of `buffers` kept under its place in
    the structure (pinned for a GPU tensor, so the copy does not wait on the GPU)."""
    if isinstance(value, torch.Tensor):
        buffer = buffers.get(key)
        if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
            buffer = torch.empty(value.shape, dtype=value.dtype, pin_memory=value.is_cuda)
            buffers[key] = buffer
        with torch.no_grad():
            buffer.copy_(value, non_blocking=value.is_cuda)
        return buffer
    if isinstance(value, dict):
        return {name: _host_copy(item, buffers, (*key, name)) for name, item in value.items()}
    if type(value) in (list, tuple):  # a param group's betas; no other sequence holds tensors
        return type(value)(_host_copy(item, buffers, (*key, i)) for i, item in enumerate(value))
    return value
