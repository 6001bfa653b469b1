"""The memory floor of a training step, and `tuner search` refusing (or warning of) trials that
cannot fit in what each will have on this machine, before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from studies import ENV, run_tuner

from model.config import ModelConfig
from model.layers import TransformerLM
from model.memory import parameter_count

QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"


@pytest.mark.parametrize("shape", [{}, {"ffn": "silu"}, {"norm": "none"}, {"d_ff": 96}])
def test_parameter_count_is_the_models(shape: dict) -> None:
    config = ModelConfig(vocab_size=300, context_length=32, d_model=64, num_layers=2,
                         num_heads=4, **shape)
    assert parameter_count(config) == TransformerLM(config).num_params()


def test_the_floor_is_below_what_training_takes(byte_dataset: Path) -> None:
    """Training on the CPU (a floor of about 0.4 GB) takes a fresh process's resident memory
    further above what it held before than the floor says."""
    script = (
        "import resource, sys, torch\n"
        "from model.config import ModelConfig, TrainConfig\n"
        "from model.memory import step_memory_floor\n"
        "from model.train import train\n"
        "torch.set_num_threads(1)\n"
        "model = ModelConfig(vocab_size=256, context_length=256, d_model=64, num_layers=2, "
        "num_heads=4)\n"
        f"config = TrainConfig(model=model, data={str(byte_dataset)!r}, batch_size=128, "
        "total_iters=2, eval_interval=2, eval_windows=1, device='cpu')\n"
        "pages = int(open('/proc/self/statm').read().split()[1])\n"  # resident now, not the peak
        "before = pages * resource.getpagesize()\n"
        "train(config)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before\n"
        "print(step_memory_floor(config, cuda=False), grown)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    floor, grown = map(int, proc.stdout.split()[-2:])
    assert 2**28 < floor < grown, (floor, grown)


def _space(tmp_path: Path, batch: object, transfer: list[int] | None = None) -> Path:
    """The quickstart with `batch` as B (and d_model transferred across `transfer`), on an empty
    data folder: a study that exits 2 at the dataset's check, after the memory check."""
    study = yaml.safe_load(QUICKSTART.read_text())
    study["hparams"]["B"] = batch
    if transfer:
        study["model"]["d_model"] = {"transfer": transfer}
        del study["model"]["d_ff"], study["search"]["asha"]
        study["search"]["scheduler"] = "none"
    (tmp_path / "empty-dataset").mkdir(exist_ok=True)
    study["data"] = {"path": str(tmp_path / "empty-dataset")}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, allow_unicode=True))
    return path


def test_a_trial_that_cannot_fit_is_refused_and_values_that_cannot_are_named(
        tmp_path: Path) -> None:
    args = ["--storage", str(tmp_path / "ray"), "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}"]
    proc = run_tuner(["search", "--space", str(_space(tmp_path, 10**6)), *args], cwd=tmp_path,
                     env=ENV)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: resources: a trial needs at least" in message
    assert "lower hparams.B" in message and "GiB of RAM available now" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-dataset", "study.yaml"]

    proc = run_tuner(["search", "--space", str(_space(tmp_path, {"choice": [8, 10**6]})), *args],
                     cwd=tmp_path, env=ENV)
    output = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, output  # the missing dataset, after the warning
    assert "these searched values cannot fit even with every other size at its smallest: " \
           "batch_size=1000000 (at least" in output
    assert "empty-dataset" in output


def test_a_transfer_size_that_cannot_fit_is_refused(tmp_path: Path) -> None:
    """Every sample trains at every transfer size: one that cannot fit is refused, not warned of."""
    proc = run_tuner(["search", "--space", str(_space(tmp_path, 8, [32, 65536])), "--storage",
                      str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
                     cwd=tmp_path, env=ENV)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: model.d_model: every sample trains at each transfer size" in message
    assert "d_model=65536 (at least" in message and "d_model=32" not in message
    assert "empty-dataset" not in message  # refused before the dataset's check
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-dataset", "study.yaml"]
