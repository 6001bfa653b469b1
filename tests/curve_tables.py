"""What the tests of tables of curves share: the tiny study they stand for, the builder script
(benchmarks/curves/build.py) and a table of it built in the test's process."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import torch
import yaml

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(path: Path, name: str) -> ModuleType:
    """A benchmark script, not a package module, loaded from its file as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = load_script(BENCHMARKS / "curves" / "build.py", "curves_build")

SPACE = {  # lm.yaml's seven searched hyperparameters on a tiny model: 4 evaluations of 512 tokens
    "name": "tiny-curves",
    "model": {"vocab_size": 300, "context_length": 16, "d_model": 16, "num_layers": 1,
              "num_heads": 2, "d_ff": 32},
    "hparams": {"α_max": {"loguniform": [1.0e-3, 1.0e-1]},
                "lr_min_ratio": {"uniform": [0.01, 0.3]},
                "warmup_fraction": {"uniform": [0.0, 0.1]}, "β2": {"uniform": [0.9, 0.999]},
                "λ": {"loguniform": [1.0e-3, 0.3]}, "τ": {"loguniform": [0.3, 3.0]},
                "B": {"choice": [4, 8]}},
    "budget": {"tokens": 2048, "eval_tokens": 512, "eval_windows": 4, "seed": 0},
    "search": {"algorithm": "tpe", "scheduler": "asha", "num_samples": 4, "max_concurrent": 2,
               "startup_trials": 2, "asha": {"grace_period": 512, "reduction_factor": 2}},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0, "device": "cpu"},
}


def write_space(folder: Path, data_dir: Path, **changes: dict) -> Path:
    """The tiny study file on `data_dir`, with sections' settings changed."""
    space = json.loads(json.dumps(SPACE))
    space["data"] = {"path": str(data_dir)}
    for section, settings in changes.items():
        space[section].update(settings)
    path = folder / f"{space['name']}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False, allow_unicode=True))
    return path


def build(space: Path, work: Path, out: Path, configs: int = 4) -> Path:
    """Build a table of `configs` configurations in this process, its torch threads put back
    after."""
    threads = torch.get_num_threads()
    try:
        return builder.build(argparse.Namespace(space=space, configs=configs, sobol_seed=0,
                                                workers=1, work=work, out=out))
    finally:
        torch.set_num_threads(threads)
