"""Build the table of learning curves that replayed studies and simulators read
(tuner.search.curve_table; docs/curves.md).

    uv run python benchmarks/curves/build.py [--space benchmarks/curves/space.yaml]
        [--configs 512] [--sobol-seed 0] [--workers 2] [--work runs/curves/cosine]
        [--out benchmarks/curves/cosine.npz]
    uv run python benchmarks/curves/build.py --figures benchmarks/curves/cosine.npz

It draws `--configs` configurations of the study file's searched parameters from a scrambled
Sobol sequence (scipy's, seeded), and trains each to the end with seeds 0 and 1, `--workers`
processes of one torch thread each, on the study's dataset (prepared by the tuner's own code and
cached). Each finished run is appended to WORK/runs.jsonl as one line, so a stopped build, run
again with the same options, trains only the runs that file lacks; one of fewer `--configs`
(the first points of the same Sobol sequence) uses a larger build's runs, even while that one
goes on. Once every run is there it writes the table to --out and prints its figures: CPU
seconds per run and the build time on idle cores they imply, the file's size, the
nearest-neighbour error against the seed noise, and how well early losses rank the final ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SPACE = REPO / "benchmarks" / "curves" / "space.yaml"
RUNS = "runs.jsonl"  # in WORK: one finished run a line
PLAN = "plan.json"  # in WORK: what the build trains, checked when it goes on
_worker: dict[str, Any] = {}  # a worker's study and dataset folder (`_start_worker`)


def draw(space: dict[str, dict[str, Any]], configs: int, seed: int) -> list[dict[str, Any]]:
    """`configs` samples of `space` (name → distribution in YAML form) at the points of a
    scrambled Sobol sequence seeded with `seed`."""
    from scipy.stats import qmc

    from tuner.search.curve_table import from_unit

    points = qmc.Sobol(d=len(space), scramble=True, seed=seed).random(configs)
    columns = {name: from_unit(dist, points[:, i]) for i, (name, dist) in enumerate(space.items())}
    return [{name: column[k] for name, column in columns.items()} for k in range(configs)]


def plan(study: Any, data_dir: Path, configs: int, seed: int) -> dict[str, Any]:
    """What a build trains: the study (its key), its dataset, the Sobol draw and its samples."""
    from tuner.search.curve_table import evaluation_points, searched_space, study_key
    from tuner.search.record.provenance import dataset_sha256

    space = searched_space(study)
    return {"study": study_key(study), "space": space, "dataset_sha256": dataset_sha256(data_dir),
            "tokens": evaluation_points(study).tolist(),
            "sobol": {"seed": seed, "scramble": True, "configs": configs},
            "samples": draw(space, configs, seed)}


def keep_plan(path: Path, planned: dict[str, Any]) -> None:
    """Keep the build's plan in WORK, or check it against the one there: the same study,
    dataset and Sobol seed; a build of fewer configurations than WORK's (their Sobol points the
    first of its) uses its runs."""
    if not path.exists():
        path.write_text(json.dumps(planned))
        return
    before, now = json.loads(path.read_text()), json.loads(json.dumps(planned))
    shorter = min(len(before["samples"]), len(now["samples"]))
    fixed = ("study", "space", "dataset_sha256", "tokens")
    if (any(before[key] != now[key] for key in fixed)
            or before["sobol"]["seed"] != now["sobol"]["seed"]
            or before["samples"][:shorter] != now["samples"][:shorter]):
        raise SystemExit(f"{path.parent} holds a build of another study, dataset or --sobol-seed: "
                         "give another --work, or the options it was started with")
    if len(now["samples"]) > len(before["samples"]):
        path.write_text(json.dumps(planned))


def _start_worker(space: str, data_dir: str) -> None:
    import torch

    from tuner.search.record.provenance import git_commit
    from tuner.space import load_study

    torch.set_num_threads(1)
    _worker.update(study=load_study(Path(space)), data_dir=Path(data_dir),
                   made_by={"commit": git_commit(), "torch": torch.__version__,
                            "host": platform.node()})


def train_run(task: tuple[int, int, dict[str, Any]]) -> dict[str, Any]:
    """Train configuration `index` with training seed `seed` to its end: its curve and costs."""
    from model.train import train

    index, seed, params = task
    config = dataclasses.replace(_worker["study"].trial_config(params, _worker["data_dir"]),
                                 seed=seed)
    cpu, wall = time.process_time(), time.perf_counter()
    result = train(config)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    records = result.records
    trained_s = sum((r.tokens - (records[i - 1].tokens if i else 0)) / r.tokens_per_s
                    for i, r in enumerate(records) if r.tokens_per_s > 0)
    return {"config": index, "seed": seed, "params": params, "status": result.status,
            "tokens": [r.tokens for r in records], "steps": [r.step for r in records],
            "val_loss": [r.val_loss for r in records],
            "train_loss": [r.train_loss for r in records],
            "tokens_per_s": result.tokens / trained_s if trained_s > 0 else 0.0,
            "cpu_s": cpu, "wall_s": wall, **_worker["made_by"]}


def finished_runs(path: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """The runs in WORK/runs.jsonl by (configuration, seed), its whole lines only."""
    if not path.exists():
        return {}
    lines = path.read_text().split("\n")[:-1]  # the last, cut short by a kill, or ""
    return {(run["config"], run["seed"]): run for run in map(json.loads, lines)}


def drop_torn_line(path: Path) -> None:
    """Cut WORK/runs.jsonl after its last whole line: a kill while a run was appended leaves
    part of a line (that run trains again)."""
    if path.exists():
        raw = path.read_bytes()
        if not raw.endswith(b"\n"):
            with open(path, "r+b") as out:
                out.truncate(raw.rfind(b"\n") + 1)


def append_run(path: Path, run: dict[str, Any]) -> None:
    """Add one run to WORK/runs.jsonl in one write, on disk before the next run is counted."""
    with open(path, "a") as out:
        out.write(json.dumps(run) + "\n")
        out.flush()
        os.fsync(out.fileno())


def train_missing(work: Path, space: Path, data_dir: Path, todo: list[tuple[int, int, dict]],
                  workers: int) -> None:
    """Train the runs `todo`, `workers` at a time, appending each to WORK/runs.jsonl as it ends."""
    if not todo:
        return
    started, done = time.monotonic(), 0

    def keep(run: dict[str, Any]) -> None:
        nonlocal done
        append_run(work / RUNS, run)
        done += 1
        print(f"{done}/{len(todo)} config {run['config']} seed {run['seed']}: {run['status']}, "
              f"final val_loss {run['val_loss'][-1]:.4f}, {run['cpu_s']:.1f} CPU s "
              f"({time.monotonic() - started:.0f} s so far)", file=sys.stderr, flush=True)

    if workers == 1:
        _start_worker(str(space), str(data_dir))
        for task in todo:
            keep(train_run(task))
        return
    with multiprocessing.get_context("spawn").Pool(
            workers, initializer=_start_worker, initargs=(str(space), str(data_dir))) as pool:
        for run in pool.imap_unordered(train_run, todo, chunksize=1):
            keep(run)


def assemble(planned: dict[str, Any], runs: dict[tuple[int, int], dict[str, Any]]
             ) -> dict[str, np.ndarray]:
    """The table's arrays from the finished runs (every planned one)."""
    from tuner.search.curve_table import SEEDS

    samples, tokens = planned["samples"], np.array(planned["tokens"], dtype=np.int64)
    n, p = len(samples), len(tokens)
    if len(runs) != n * SEEDS:
        raise SystemExit(f"{n * SEEDS - len(runs)} of the {n * SEEDS} runs are missing")
    arrays = {"params": np.array([list(s.values()) for s in samples], dtype=np.float64),
              "tokens": tokens, "steps": np.zeros((n, p), dtype=np.int32),
              "val_loss": np.full((n, SEEDS, p), np.nan, dtype=np.float32),
              "train_loss": np.full((n, SEEDS, p), np.nan, dtype=np.float32),
              "tokens_per_s": np.zeros((n, SEEDS), dtype=np.float32),
              "cpu_s": np.zeros((n, SEEDS), dtype=np.float32)}
    for (i, s), run in runs.items():
        k = len(run["tokens"])
        if run["status"] == "diverged":  # its inf is at the step it diverged: the table has it
            run["tokens"][-1] = int(tokens[np.searchsorted(tokens, run["tokens"][-1])])  # at the
        if run["tokens"] != planned["tokens"][:k]:  # first point at or after that step

            raise SystemExit(f"run {i} seed {s} evaluated at {run['tokens']}, not at the planned "
                             "points")
        arrays["val_loss"][i, s, :k], arrays["train_loss"][i, s, :k] = (run["val_loss"],
                                                                        run["train_loss"])
        arrays["tokens_per_s"][i, s], arrays["cpu_s"][i, s] = run["tokens_per_s"], run["cpu_s"]
        steps_per_token = run["steps"][0] / run["tokens"][0]  # the same B at every point
        arrays["steps"][i] = np.rint(tokens * steps_per_token)
    finals = np.where(np.isnan(arrays["val_loss"][:, :, -1]), np.inf, arrays["val_loss"][:, :, -1])
    with np.errstate(invalid="ignore"):  # two diverged seeds: inf − inf, an sd of NaN
        arrays["seed_sd"] = (np.abs(finals[:, 0] - finals[:, 1]) / np.sqrt(2)).astype(np.float32)
    return arrays


def provenance(work: Path, runs: dict[tuple[int, int], dict[str, Any]], workers: int
               ) -> dict[str, Any]:
    """Where the table came from: code, versions, machine, the commands that built it, costs."""
    cpu = sum(run["cpu_s"] for run in runs.values())
    commands = (work / "commands.txt").read_text().splitlines()
    return {"commits": sorted({run["commit"] for run in runs.values()}),
            "torch": sorted({run["torch"] for run in runs.values()}),
            "python": platform.python_version(),
            "numpy": metadata.version("numpy"), "scipy": metadata.version("scipy"),
            "hosts": sorted({run["host"] for run in runs.values()}), "machine": cpu_model(),
            "cores": os.cpu_count(), "workers": workers, "threads_per_run": 1,
            "commands": commands, "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "cpu_s": round(cpu, 1),
            "wall_s_of_runs": round(sum(run["wall_s"] for run in runs.values()), 1),
            "idle_build_s_estimate": round(cpu / workers, 1)}


def cpu_model() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def leave_one_out(table: Any, k: int = 1) -> np.ndarray:
    """Each configuration's mean final val_loss predicted by the mean of its `k` nearest others
    in the unit cube, minus its own (configurations whose seeds both completed)."""
    finite = np.isfinite(table.mean_final)
    unit, target = table.unit[finite], table.mean_final[finite]
    distances = ((unit[:, None, :] - unit[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :min(k, len(target) - 1)]
    return target[nearest].mean(axis=1) - target


def figures(table: Any) -> list[str]:
    """The table's figures for docs/benchmarks.md."""
    from scipy.stats import spearmanr

    prov, cpu, means = table.meta["provenance"], table.cpu_s, table.mean_final
    finite = np.isfinite(means)
    best = int(np.argmin(np.where(finite, means, np.inf)))
    sd = table.seed_sd[np.isfinite(table.seed_sd)]
    batch = table.params[:, list(table.space).index("batch_size")]
    lines = [(f"{table.path}: {table.path.stat().st_size / 1e6:.2f} MB, {len(table.params)} "
              f"configurations × 2 seeds, {len(table.tokens)} points to {table.tokens[-1]:,} "
              f"tokens; {int((~finite).sum())} configurations diverged in a seed")]
    lines.append(f"built at {', '.join(prov['commits'])} with torch {', '.join(prov['torch'])} "
                 f"on {prov['machine']} ({prov['cores']} cores), {prov['workers']} runs at once")
    lines.append(f"CPU seconds a run: mean {cpu.mean():.1f}, median {np.median(cpu):.1f}; in all "
                 f"{cpu.sum():,.0f}, so about {cpu.sum() / prov['workers'] / 60:.0f} min on "
                 f"{prov['workers']} idle cores (estimated from CPU time on a shared machine)")
    lines.append("CPU seconds a run by B: " + ", ".join(
        f"{b:g}: {cpu[batch == b].mean():.1f}" for b in np.unique(batch)))
    lines.append(f"best mean final val_loss {means[best]:.4f} at " + ", ".join(
        f"{name} {value:.4g} ({unit:.2f} of its range)" for name, value, unit
        in zip(table.space, table.params[best], table.unit[best])))
    lines.append(f"seed noise: sd of a configuration's two seeds, median {np.median(sd):.4f}, "
                 f"pooled {table.pooled_seed_sd:.4f}")
    for k in (1, 5):
        error = np.abs(leave_one_out(table, k))
        lines.append(f"{k}-nearest-neighbour prediction of a configuration's mean final "
                     f"val_loss (leave-one-out): |error| median {np.median(error):.4f}, RMSE "
                     f"{np.sqrt(np.mean(error ** 2)):.4f}; {np.median(error) / np.median(sd):.1f}"
                     "× the median seed sd")
    for share in (16, 4):
        at = len(table.tokens) // share - 1
        rho = spearmanr(table.val_loss[finite, 0, at], means[finite]).statistic
        lines.append(f"Spearman ρ of seed 0's val_loss at 1/{share} of the budget with the mean "
                     f"final val_loss: {rho:.2f}")
    return lines


def build(args: argparse.Namespace) -> Path:
    """Train what WORK lacks of the planned runs, then write the table; its path."""
    from tuner.search import curve_table
    from tuner.space import load_study
    from tuner.space.dataset_fit import study_dataset

    study = load_study(args.space)
    data_dir, _ = study_dataset(study)
    planned = plan(study, data_dir, args.configs, args.sobol_seed)
    args.work.mkdir(parents=True, exist_ok=True)
    keep_plan(args.work / PLAN, planned)
    with open(args.work / "commands.txt", "a") as out:
        out.write(shlex.join([Path(sys.executable).name, *sys.argv]) + "\n")
    runs = finished_runs(args.work / RUNS)
    todo = [(i, seed, sample) for i, sample in enumerate(planned["samples"])
            for seed in range(curve_table.SEEDS) if (i, seed) not in runs]
    if todo:  # else another build may be appending to WORK: read it, never cut it
        drop_torn_line(args.work / RUNS)
    print(f"{len(runs)} runs done, {len(todo)} to train", file=sys.stderr, flush=True)
    train_missing(args.work, args.space, data_dir, todo, args.workers)
    runs = {key: run for key, run in finished_runs(args.work / RUNS).items()
            if key[0] < args.configs}  # a larger build's others
    meta = {"format": curve_table.FORMAT,
            **{key: planned[key] for key in ("study", "space", "dataset_sha256", "sobol")},
            "seeds": list(range(curve_table.SEEDS)),
            "provenance": provenance(args.work, runs, args.workers)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    return curve_table.save(args.out, meta, assemble(planned, runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, default=SPACE, help="the study file")
    parser.add_argument("--configs", type=int, default=512, help="configurations (a power of 2 "
                        "keeps the Sobol points balanced)")
    parser.add_argument("--sobol-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="runs trained at once")
    parser.add_argument("--work", type=Path, default=Path("runs/curves/cosine"),
                        help="where finished runs are kept until the table is written")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "curves" / "cosine.npz")
    parser.add_argument("--figures", type=Path, metavar="TABLE",
                        help="print the figures of a table written before, and build nothing")
    args = parser.parse_args()
    from tuner.errors import UserError
    from tuner.search.curve_table import load

    try:
        table = load(args.figures or build(args))
    except UserError as err:
        sys.exit(f"error: {err}")
    print("\n".join(figures(table)))


if __name__ == "__main__":
    main()
