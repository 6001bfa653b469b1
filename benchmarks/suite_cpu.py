"""Where a command's CPU goes, by kind of process: run it (the test suite by default) and sample
/proc twice a second, summing each process's CPU seconds under its kind (a Ray trial actor, Ray's
own servers, a `tuner` command by subcommand, a pytest worker, …).

    uv run python benchmarks/suite_cpu.py [--json FILE] [-- COMMAND ...]   # default: pytest

Linux only. It counts every process on the machine, so run it on an otherwise idle one. A process
that lives less than half a second may be missed, and each is counted under its first command line
seen (Ray renames its workers later): sums are a floor. Prints a markdown table for
docs/benchmarks.md and exits with the command's status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
RAY_SERVERS = ("log_monitor.py", "monitor.py", "dashboard.py", "agent.py", "runtime_env",
               "gcs_server", "raylet")


def kind(argv: list[str]) -> str:
    """The kind of process a command line names (its first name, as /proc shows it)."""
    line = " ".join(argv)
    if "setup_worker.py" in line or "default_worker.py" in line or argv[0].startswith("ray::"):
        return "Ray worker (trial actors)"
    if any(server in line for server in RAY_SERVERS):
        return "Ray's servers"
    names = [Path(arg).name for arg in argv[:3]]
    if "tuner" in names:  # the console script, or `python -m tuner`
        rest = argv[names.index("tuner") + 1:]
        command = next((arg for arg in rest if not arg.startswith("-")), "")
        return f"tuner {command}".strip()
    args = list(argv[1:])
    while args[:1] and args[0] in ("-u", "-B", "-E", "-I", "-O", "-s", "-S"):
        args.pop(0)  # the interpreter's flags (xdist starts its workers unbuffered, as Ray does)
    if "multiprocessing" in line:
        return "multiprocessing workers"
    if "xdist" in line or "pytest" in names[:2] or args[:1] == ["-c"]:
        return "pytest and its workers"
    if args[:1] == ["-m"] and len(args) > 1:
        return f"{names[0]} -m {args[1]}"
    if args and args[0].endswith(".py"):  # a script: by its name
        return Path(args[0]).name
    return names[0] or "(exited)"


def _sample(seen: dict[tuple[str, str], list]) -> None:
    """Each live process's CPU seconds so far (this one's aside), under the kind of its first
    command line seen."""
    for pid in set(filter(str.isdigit, os.listdir("/proc"))) - {str(os.getpid())}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            key = (pid, fields[19])  # a pid is reused: its start time tells the processes apart
            if key not in seen:
                argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
                seen[key] = [kind(argv), 0.0]
            seen[key][1] = (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, IndexError):
            continue


def measure(command: list[str]) -> tuple[int, float, dict[str, tuple[float, int]]]:
    """Run `command`: its exit status, wall seconds, and (CPU seconds, processes) by kind."""
    seen: dict[tuple[str, str], list] = {}
    _sample(seen)
    before = {key: cpu for key, (_, cpu) in seen.items()}
    start = time.monotonic()
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        _sample(seen)
        time.sleep(0.5)
    wall = time.monotonic() - start
    for _ in range(6):  # what it left running (Ray's servers shutting down)
        _sample(seen)
        time.sleep(0.5)
    totals: dict[str, tuple[float, int]] = {}
    for key, (name, cpu) in seen.items():
        spent = cpu - before.get(key, 0.0)
        if spent > 0:
            total, count = totals.get(name, (0.0, 0))
            totals[name] = (total + spent, count + 1)
    return proc.returncode, wall, totals


def table(wall: float, totals: dict[str, tuple[float, int]], rows: int = 12) -> str:
    """A markdown table of the kinds by CPU seconds, their share and process count."""
    cpu = sum(total for total, _ in totals.values())
    lines = [f"wall {wall:,.0f} s, CPU {cpu:,.0f} s ({cpu / wall:.2f} cores busy on average)", "",
             "| processes | CPU-s | share | count | CPU-s each |", "|---|---:|---:|---:|---:|"]
    for name, (total, count) in sorted(totals.items(), key=lambda item: -item[1][0])[:rows]:
        lines.append(f"| {name} | {total:,.0f} | {total / cpu:.0%} | {count} | "
                     f"{total / count:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the sums here")
    parser.add_argument("command", nargs="*", default=[sys.executable, "-m", "pytest"])
    args = parser.parse_args()
    status, wall, totals = measure(args.command)
    print(table(wall, totals))
    if args.json:
        args.json.write_text(json.dumps({"command": args.command, "status": status, "wall": wall,
                                         "totals": totals}, indent=1))
    sys.exit(status)


if __name__ == "__main__":
    main()
