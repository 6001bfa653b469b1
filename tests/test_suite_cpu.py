"""benchmarks/suite_cpu.py: a command's CPU seconds by kind of process."""

from __future__ import annotations

import sys
from pathlib import Path

from curve_tables import BENCHMARKS, load_script

suite_cpu = load_script(BENCHMARKS / "suite_cpu.py", "suite_cpu")

VENV = "/repo/.venv/bin"
SITE = "/repo/.venv/lib/python3.11/site-packages/ray"


def test_processes_are_named_by_what_they_are_to_a_study() -> None:
    kinds = {
        "Ray worker (trial actors)": [f"{VENV}/python", f"{SITE}/_private/workers/setup_worker.py",
                                      "--worker-shim-pid=1"],
        "Ray's servers": [f"{VENV}/python", "-u", f"{SITE}/_private/log_monitor.py"],
        "tuner search": [f"{VENV}/python", f"{VENV}/tuner", "search", "--space", "s.yaml"],
        "tuner replay": [f"{VENV}/python", "-m", "tuner", "replay", "RUN"],
        "pytest and its workers": [f"{VENV}/python", "-u", "-c", "import sys;exec(...)"],
        "python -m uvicorn": [f"{VENV}/python", "-m", "uvicorn", "app"],
        "multiprocessing workers": [f"{VENV}/python", "-B", "-c",
                                    "from multiprocessing.forkserver import main; main(1)"],
        "gpu_study.py": [f"{VENV}/python", "/repo/benchmarks/gpu_study.py", "--tiny"],
    }
    assert {suite_cpu.kind(argv): name for name, argv in kinds.items()} == {
        name: name for name in kinds}
    assert suite_cpu.kind([f"{SITE}/core/src/ray/raylet/raylet", "--node_id=x"]) == \
        "Ray's servers"


def test_a_busy_child_is_counted_and_its_status_kept(tmp_path: Path) -> None:
    script = tmp_path / "busy_child.py"
    script.write_text("import time\nend = time.process_time() + 1.2\n"
                      "while time.process_time() < end:\n    pass\nraise SystemExit(3)\n")
    status, wall, totals = suite_cpu.measure([sys.executable, str(script)])
    assert status == 3 and wall >= 1.2
    cpu, count = totals["busy_child.py"]
    assert 0.7 <= cpu <= 1.5 and count == 1  # its last half second may fall after the last sample
    assert "| busy_child.py | 1 | " in suite_cpu.table(wall, totals)
