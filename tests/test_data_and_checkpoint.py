"""Batches from memory-mapped tokens, the fixed validation set, and safe atomic checkpoints."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import (checkpoint_state, load_checkpoint, model_state, read_checkpoint,
                              save_checkpoint)
from model.checkpoint_writer import CheckpointWriter
from model.config import ConfigError, TrainConfig
from model.data import get_batch, validation_windows
from model.token_files import Dataset, load_tokens


def test_batches_are_shifted_windows_of_the_memmap(byte_dataset: Path) -> None:
    tokens = load_tokens(byte_dataset / "train.npy", 256)
    assert isinstance(tokens, np.memmap)
    gen = torch.Generator().manual_seed(0)
    x, y = get_batch(tokens, 16, 24, "cpu", gen)
    assert x.shape == y.shape == (16, 24) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    row = np.asarray(tokens, dtype=np.int64)
    for xi, yi in zip(x.tolist(), y.tolist()):
        start = next(i for i in range(len(row)) if row[i:i + 24].tolist() == xi)
        assert row[start + 1:start + 25].tolist() == yi


def test_batches_follow_the_generator_and_cover_the_data() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    first = get_batch(tokens, 8, 10, "cpu", torch.Generator().manual_seed(7))[0]
    again = get_batch(tokens, 8, 10, "cpu", torch.Generator().manual_seed(7))[0]
    assert torch.equal(first, again)
    starts = get_batch(tokens, 4000, 10, "cpu", torch.Generator().manual_seed(1))[0][:, 0]
    assert starts.min() < 20 and starts.max() > 970  # uniform over every valid start


@pytest.mark.parametrize(("device", "message"), [
    ("tpu:9", "unknown device 'tpu:9'"),
    ("cuda:99", "device 'cuda:99' requested but"),  # no CUDA here, or fewer GPUs than 100
])
def test_unknown_or_unavailable_device_raises_what_torch_raises(device: str, message: str) -> None:
    tokens = np.arange(100, dtype=np.uint16)
    for kind in (RuntimeError, ValueError):  # torch's error for a device, and the one before
        with pytest.raises(kind, match=message):
            get_batch(tokens, 2, 4, device)
        with pytest.raises(kind, match=message):
            validation_windows(tokens, 4, 2, device)


def test_validation_windows_are_fixed() -> None:
    tokens = np.arange(500, dtype=np.uint16)
    x, y = validation_windows(tokens, 16, 10, "cpu")
    x2, _ = validation_windows(tokens, 16, 10, "cpu")
    assert torch.equal(x, x2) and x.shape == (10, 16) and torch.equal(y[:, :-1], x[:, 1:])
    assert x[:, 0].tolist() == np.linspace(0, 483, 10).astype(int).tolist()  # evenly spaced
    assert int(y[-1, -1]) == 499  # the last window reaches the end of the tokens


def test_token_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_tokens(tmp_path / "missing.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ConfigError, match="empty.npy: not a readable .npy token array"):
        load_tokens(tmp_path / "empty.npy")
    np.save(tmp_path / "f.npy", np.arange(10, dtype=np.float32))
    with pytest.raises(ConfigError, match="uint16/uint32"):
        load_tokens(tmp_path / "f.npy")
    np.save(tmp_path / "t.npy", np.array([1, 2, 300], dtype=np.uint16))
    with pytest.raises(ConfigError, match="300 is not below vocab_size=256"):
        load_tokens(tmp_path / "t.npy", 256)


@pytest.mark.parametrize(("meta", "message"), [
    (b"[1]", "meta.json: expected a JSON object"),
    (b"\xff{}", "meta.json: not a readable JSON file"),
    (b'{"vocab_size": "x"}', "meta.json: vocab_size 'x' is not a whole number"),
])
def test_a_bad_meta_json_names_the_file(tmp_path: Path, meta: bytes, message: str) -> None:
    for split in ("train", "valid"):
        np.save(tmp_path / f"{split}.npy", np.arange(100, dtype=np.uint16))
    (tmp_path / "meta.json").write_bytes(meta)
    with pytest.raises(ConfigError, match=message):
        Dataset.open(tmp_path, vocab_size=256, context_length=8)


def test_a_data_path_that_is_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "train.npy").write_bytes(b"")
    with pytest.raises(ConfigError, match="train.npy is a file, not a dataset folder"):
        Dataset.open(tmp_path / "train.npy", vocab_size=256, context_length=8)


def test_a_data_value_that_is_not_a_path_names_the_field() -> None:
    with pytest.raises(ConfigError, match="data: name a prepared dataset folder"):
        TrainConfig(data=5, total_iters=10).validate()  # type: ignore[arg-type]


class _Compiled(torch.nn.Module):
    """Shaped like torch.compile's wrapper: the real module lives under `_orig_mod`."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self._orig_mod = inner


def test_checkpoint_round_trip_is_atomic_and_unprefixed(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = save_checkpoint(_Compiled(model), opt, 7, tmp_path / "c.pt", note="hi")
    assert os.listdir(tmp_path) == ["c.pt"]
    state = read_checkpoint(path)
    assert set(state["model"]) == {"weight", "bias"} and state["note"] == "hi"

    fresh = torch.nn.Linear(4, 3)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    assert load_checkpoint(path, fresh, fresh_opt) == 7
    assert all(torch.equal(a, b) for a, b in zip(model_state(model).values(),
                                                 model_state(fresh).values()))
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_a_failed_save_keeps_the_last_checkpoint_and_leaves_no_partial_file(
        tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3)
    path = save_checkpoint(model, None, 1, tmp_path / "c.pt")
    with pytest.raises(Exception):  # noqa: B017 (torch raises a pickling error of its own)
        save_checkpoint(model, None, 2, path, unsaveable=lambda: 0)
    assert os.listdir(tmp_path) == ["c.pt"] and read_checkpoint(path)["iteration"] == 1


def test_a_background_checkpoint_holds_the_state_when_started_and_a_failed_one_raises_at_wait(
        tmp_path: Path) -> None:
    """The writer copies the state before `start` returns (training changes it at once after);
    a write that fails raises on the waiting thread and keeps the checkpoint before it whole."""
    model = torch.nn.Linear(4, 3)
    before = model.weight.detach().clone()
    writer = CheckpointWriter(tmp_path, torch.device("cpu"))
    writer.start(checkpoint_state(model, None, 1))
    with torch.no_grad():
        model.weight.add_(1.0)
    assert writer.wait() == tmp_path / "checkpoint.pt"
    assert torch.equal(read_checkpoint(tmp_path)["model"]["weight"], before)
    writer.start({**checkpoint_state(model, None, 2), "unsaveable": lambda: 0})
    with pytest.raises(Exception):  # noqa: B017 (torch raises a pickling error of its own)
        writer.wait()
    writer.close()
    assert os.listdir(tmp_path) == ["checkpoint.pt"] and read_checkpoint(tmp_path)["iteration"] == 1


def test_a_checkpoint_is_on_disk_before_its_name_and_its_name_before_the_return(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Durable: the file's bytes are synced before it is renamed to the checkpoint's name, and
    the folder (the name) before save_checkpoint returns, so a crash never leaves a short file
    under that name."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def synced(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def renamed(src: str, dst: str) -> None:
        events.append(("rename", str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "replace", renamed)
    path = save_checkpoint(torch.nn.Linear(4, 3), None, 1, tmp_path / "c.pt")
    [(first, temporary), second, third] = events
    assert first == "fsync" and Path(temporary).parent == tmp_path and temporary != str(path)
    assert second == ("rename", str(path)) and third == ("fsync", str(tmp_path))


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"model": _Exploit(marker), "iteration": 1}, bad)
    with pytest.raises(ConfigError) as raised:
        read_checkpoint(bad)
    assert not marker.exists()
    message = str(raised.value)
    refused = "refused by torch.load(weights_only=True): "
    assert message.startswith(f"{bad}: not a loadable checkpoint ({refused}")
    assert "posix" in message  # what it would have called
    # torch's advice to load it with weights_only=False: not passed on
    assert "False" not in message


def test_truncated_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = save_checkpoint(torch.nn.Linear(8, 8), None, 1, tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ConfigError) as err:
        read_checkpoint(path)
    assert err.value.field == str(path)
    assert err.value.message.endswith("(not a torch.save archive: another format, or cut short)")
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="not a loadable checkpoint \\(the file is empty\\)"):
        read_checkpoint(path, mmap=True)


@pytest.mark.parametrize("content", [b"step 100, loss 3.2\n", pickle.dumps({"model": {}}, 4)],
                         ids=["text", "bare pickle"])
@pytest.mark.parametrize("mmap", [False, True])
def test_a_file_of_another_format_is_named_as_such(tmp_path: Path, content: bytes,
                                                   mmap: bool) -> None:
    """Not torch's errors, which blame mmap or a pickle's first byte, and no torch warning."""
    path = tmp_path / "c.pt"
    path.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match="not a loadable checkpoint \\(not a torch.save "
                                              "archive: another format, or cut short\\)$"):
            read_checkpoint(path, mmap=mmap)


def _tensor_bytes_at(path: Path) -> int:
    """Where the first tensor's bytes start in a torch.save zip."""
    with zipfile.ZipFile(path) as archive:
        entry = next(e for e in archive.infolist() if "/data/" in e.filename)
    with open(path, "rb") as fh:
        fh.seek(entry.header_offset + 26)
        name_len, extra_len = int.from_bytes(fh.read(2), "little"), int.from_bytes(fh.read(2),
                                                                                   "little")
    return entry.header_offset + 30 + name_len + extra_len


def test_a_checkpoint_with_damaged_tensor_bytes_names_the_file(tmp_path: Path) -> None:
    """torch.load reads a flipped weight as it is: the zip's checksums name the damage."""
    path = save_checkpoint(torch.nn.Linear(8, 8), None, 1, tmp_path / "c.pt")
    data = bytearray(path.read_bytes())
    at = _tensor_bytes_at(path)
    data[at:at + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    assert not torch.isfinite(read_checkpoint(path, mmap=True)["model"]["weight"]).all()
    with pytest.raises(ConfigError) as err:
        read_checkpoint(path)
    assert err.value.field == str(path)
    assert "is damaged: its entry data/0 fails its checksum" in str(err.value)


def test_a_checkpoint_with_a_damaged_entry_header_names_the_file(tmp_path: Path) -> None:
    """Bytes flipped in an entry's local header (its name) are damage too, not a traceback."""
    import zipfile

    path = save_checkpoint(torch.nn.Linear(8, 8), None, 1, tmp_path / "c.pt")
    with zipfile.ZipFile(path) as archive:
        name_at = archive.infolist()[-1].header_offset + 30  # the fixed part of a local header
    data = bytearray(path.read_bytes())
    data[name_at:name_at + 4] = b"\x94\xff\xfe\x80"  # not UTF-8
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError) as err:
        read_checkpoint(path)
    assert err.value.field == str(path)
    assert "is damaged: an entry's header is unreadable" in str(err.value)


def test_a_checkpoint_saved_without_checksums_loads(tmp_path: Path) -> None:
    from torch.utils.serialization import config

    config.save.compute_crc32 = False
    try:
        path = save_checkpoint(torch.nn.Linear(8, 8), None, 1, tmp_path / "c.pt")
    finally:
        config.save.compute_crc32 = True
    assert read_checkpoint(path)["iteration"] == 1


def test_the_study_driver_never_imports_torch(tmp_path: Path) -> None:
    # The driver names and hashes checkpoint files while trials wait on each report: importing
    # torch there stalled every trial's first report by seconds.
    (tmp_path / "f").write_bytes(b"x")
    script = ("import sys\n"
              "import tuner.cli\n"
              "from tuner.search.run import runner\n"
              "from tuner.search.record import tracking\n"
              "from model.checkpoint import checkpoint_path, file_sha256\n"
              "file_sha256(sys.argv[1] + '/f'), checkpoint_path(sys.argv[1])\n"
              "sys.exit('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr or "the driver's modules imported torch"
