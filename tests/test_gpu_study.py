"""benchmarks/gpu_study.py's --tiny mode: the GPU benchmark's code, end to end on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_benchmark_runs_its_baseline_and_study_and_measures_them(tmp_path: Path) -> None:
    """One command: a trial alone, then a study of lm.yaml's search on the data it made, measured
    from the trials' own results (eager on the CPU: `compile: auto`)."""
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_study.py"), "--tiny",
                           "--samples", "4", "--work", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["baseline"]["tokens_per_s"] > 0 and not figures["baseline"]["compiled"]
    assert figures["trials"] == 4 and figures["tokens"] >= 4 * 409_600 // 16
    assert figures["ratio"] > 0 and 0 < figures["steps_share"] <= 1
    assert all(seconds == 0 for runs in figures["compiles"].values() for seconds, _ in runs)
    # a trial keeps a checkpoint at its end and past half its budget, not at each evaluation
    assert figures["evaluations_max"] == 40 and figures["checkpoints_max"] == 2
    assert 0 < figures["disk_mb_per_trial"] and figures["checkpoint_s_per_trial"] >= 0
    assert "| the study's aggregate |" in proc.stdout
