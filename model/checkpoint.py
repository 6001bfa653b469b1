"""Checkpoints: written atomically and durably, read with `weights_only=True` so a file can never
run code.

torch is imported only to write or read one: the tuning driver names and hashes checkpoint files
without paying for torch while its trials wait on it.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.config import ConfigError, TrainConfig, train_config_from_dict

if TYPE_CHECKING:
    import torch

CHECKPOINT_NAME = "checkpoint.pt"
_COMPILE_PREFIX = "_orig_mod."


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without torch.compile's `_orig_mod.` prefix."""
    return {k.removeprefix(_COMPILE_PREFIX): v for k, v in model.state_dict().items()}


def checkpoint_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                     iteration: int, **extra: Any) -> dict[str, Any]:
    """What a checkpoint holds: model, optimizer, iteration and `extra` (their live tensors)."""
    state = {"model": model_state(model), "iteration": iteration, **extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    iteration: int, out: str | Path, **extra: Any) -> Path:
    """Write model, optimizer, iteration and `extra` to `out` (a file, or a folder for the default
    name), whole on disk when it returns (`write_checkpoint`)."""
    return write_checkpoint(checkpoint_state(model, optimizer, iteration, **extra), out)


def write_checkpoint(state: dict[str, Any], out: str | Path) -> Path:
    """Write `state` to `out` (a file, or a folder for the default name): whole on disk when it
    returns, so a crash (power, the node) never leaves a short file under the checkpoint's name."""
    import torch

    out = Path(out)
    if out.is_dir():
        out = out / CHECKPOINT_NAME
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        _fsync(tmp)  # the bytes, before the name points at them
        os.replace(tmp, out)
        _fsync(out.parent)  # the name
    finally:
        tmp.unlink(missing_ok=True)  # a failed save (a full disk) leaves no partial file
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_path(src: str | Path) -> Path:
    """Resolve a checkpoint file, or the default-named file inside a folder."""
    src = Path(src)
    return src / CHECKPOINT_NAME if src.is_dir() else src


def _whole_sentences(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its sentences that do (or its start)."""
    if len(text) <= limit:
        return text
    end = text.rfind(". ", 0, limit)
    return text[:end + 1] if end > 0 else text[:limit] + "…"


def _load_failure(err: Exception) -> str:
    """What torch.load found wrong, without its advice to load the file unsafely."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Weights only load failed"):
        return f"{type(err).__name__}: {_whole_sentences(lines[0], 200) if lines else ''}"
    # torch's header advises weights_only=False; the line before its documentation link says why
    details = [line for line in lines[1:] if not line.startswith("Check the documentation")]
    why = details[-1].rpartition("WeightsUnpickler error:")[2].split(". Please use")[0].strip()
    return f"refused by torch.load(weights_only=True): {why or 'not a safe checkpoint'}"


def checkpoint_problem(path: Path, checksums: bool = False) -> str | None:
    """Why the file `path` is no checkpoint (missing, empty, cut short, another format; with
    `checksums`, damaged bytes too, reading the whole file), without torch; None when it may load
    (its pickle is not read)."""
    if not path.is_file():
        return "checkpoint not found"
    if path.stat().st_size == 0:  # torch's own message blames mmap or the zip format
        return "not a loadable checkpoint (the file is empty)"
    if not zipfile.is_zipfile(path):  # torch's own messages blame mmap, or a pickle's key
        return "not a loadable checkpoint (not a torch.save archive: another format, or cut short)"
    damaged = _damage(path) if checksums else None
    return f"is damaged: {damaged}" if damaged else None


def read_checkpoint(src: str | Path, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint's contents safely; a missing, truncated, damaged or unsafe file names
    itself. With `mmap`, tensors stay on disk until touched (to read only its small entries), and
    their checksums are not read."""
    import torch

    path = checkpoint_path(src)
    problem = checkpoint_problem(path, checksums=not mmap)
    if problem:
        raise ConfigError(str(path), problem)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # corrupt and unsafe files land here
        raise ConfigError(str(path), f"not a loadable checkpoint ({_load_failure(err)})") from err
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise ConfigError(str(path), "not a trainer checkpoint (no model state or iteration)")
    return state


def _damage(path: Path) -> str | None:
    """What is damaged in a torch.save zip: the first entry whose bytes fail its CRC-32 (torch.load
    does not check them, so a flipped tensor byte would load as a silently different weight), or
    an entry's header; None when it is whole."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(entry.CRC for entry in archive.infolist()):  # saved with compute_crc32 off
                return None
            damaged = archive.testzip()
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:  # UnicodeDecodeError too
        return f"an entry's header is unreadable ({type(err).__name__})"
    if damaged is None:
        return None
    entry = damaged.partition("/")[2] or damaged  # not its folder, named after the temporary file
    return f"its entry {entry} fails its checksum"


def checkpoint_config(src: str | Path) -> TrainConfig:
    """The trainer config a checkpoint was written with (the trainer saves it at each one)."""
    path = checkpoint_path(src)
    saved = read_checkpoint(path, mmap=True).get("config")  # train() reads the tensors
    if not isinstance(saved, dict):
        raise ConfigError(str(path), "holds no trainer config: give --config")
    try:
        config = train_config_from_dict(saved)
        config.validate()
    except ConfigError as err:
        raise ConfigError(str(path), f"holds a config that is not valid ({err}): give --config"
                          ) from None
    return config


def load_checkpoint(src: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore model (and optimizer) state from `src`; return the saved iteration."""
    state = read_checkpoint(src)
    target = getattr(model, "_orig_mod", model)
    target.load_state_dict(state["model"])
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    return int(state["iteration"])


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
