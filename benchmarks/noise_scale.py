"""The gradient noise scale B_simple on the quickstart: what measuring it costs, how much it spreads
over seeds at a fixed point, and how it compares with the B the search finds best at each rung,
on the quickstart and on the table of curves.

    uv run python benchmarks/noise_scale.py cost                 # CPU seconds, one thread
    uv run python benchmarks/noise_scale.py spread --seeds 0 1 2 3 4
    uv run python benchmarks/noise_scale.py agreement --tracking-uri URI --study S [--study S ...]
    uv run python benchmarks/noise_scale.py table [--table benchmarks/curves/cosine.npz]
        [--equal-time]

`agreement` reads studies of search_spaces/quickstart.yaml run with `budget.noise_interval:
1` (each evaluation measures); `table` trains the table's best configuration at each B with
each evaluation measuring, or with `--equal-time` (no training) compares the B's at equal CPU
time instead of equal tokens; all for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
CURVES = REPO / "benchmarks" / "curves"  # the table of curves and the study it stands for
SHARES = (1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)  # the table's points compared: shares of its budget
RUNGS = (40960, 122880, 368640, 409600)  # the quickstart's ASHA rungs and its full trial
BEST = {"lr_max": 0.005714, "warmup_fraction": 0.01434}  # a quickstart study's best trial (TPE)
LM_EVAL_TOKENS, LM_CONTEXT = 8192000, 256  # search_spaces/lm.yaml
COMPILED_SPEEDUP = 1.8  # a compiled step's tokens/s over an eager one's on a GPU (benchmarks.md)


def quickstart(batch_size: int, **values: float):
    """The quickstart's trainer config at `batch_size` and its best trial's other values."""
    from tuner.space import load_study
    from tuner.space.dataset_fit import study_dataset

    study = load_study(QUICKSTART)
    data, _ = study_dataset(study)
    return study.trial_config({**BEST, **values, "batch_size": batch_size}, data)


def cost(steps: int, measurements: int) -> None:
    """CPU seconds of a training step and of a measurement at each of the quickstart's B's, and
    the share of a full trial the measurements take at the default interval and at every
    evaluation; lm.yaml's share estimated from it."""
    import torch

    from model.token_files import Dataset
    from model.train import autocast_for, forward_backward, next_batch_noise, seeded_start, update

    torch.set_num_threads(1)
    device = torch.device("cpu")
    print("| B | step (ms) | measurement (ms) | in steps | share: default (100 steps) | "
          "share: every evaluation |\n|---|---|---|---|---|---|")
    ratios = []
    for batch in (8, 16, 32):
        config = quickstart(batch)
        data = Dataset.open(config.data, config.model.vocab_size, config.model.context_length)
        model, optimizer, batches = seeded_start(config, device)
        autocast = autocast_for(config, device)
        for _ in range(5):  # warm
            forward_backward(model, data, config, device, batches, autocast)
            update(model, optimizer, 1e-3, 1.0)
        begin = time.process_time()
        for _ in range(steps):
            forward_backward(model, data, config, device, batches, autocast)
            update(model, optimizer, 1e-3, 1.0)
        step = (time.process_time() - begin) / steps
        begin = time.process_time()
        for _ in range(measurements):
            next_batch_noise(model, data, config, device, batches, autocast)
        measure = (time.process_time() - begin) / measurements
        ratios.append(measure / step)
        evals = [s for s in range(1, config.steps + 1) if config.evaluates_after(s)
                 or s == config.steps]
        default = sum(config.measures_noise_after(s, before) for s, before in
                      zip(evals, [0, *evals]))
        print(f"| {batch} | {step * 1e3:.1f} | {measure * 1e3:.1f} | {measure / step:.2f} | "
              f"{default * measure / (config.steps * step):.2%} ({default} of {len(evals)}) | "
              f"{len(evals) * measure / (config.steps * step):.2%} |", flush=True)
    gpu = ratios[-1] * COMPILED_SPEEDUP  # the largest B's: its micro-batches are the least
    # dominated by each call's overhead, as lm.yaml's (B/4 sequences of 256 tokens) on a GPU
    shares = ", ".join(f"B {b}: {gpu * b * LM_CONTEXT / LM_EVAL_TOKENS:.2%}"
                       for b in (32, 64, 128, 256))
    print(f"lm.yaml, every evaluation measured (each ≥ 100 steps apart), a measurement taken "
          f"as {gpu:.1f} compiled steps: {shares}")


def spread(seeds: list[int], batch: int) -> None:
    """B_simple of the quickstart's best trial at `batch` measured at each evaluation, over
    `seeds`: its median, range and coefficient of variation at each evaluation (inf: the noise
    hid |G|²)."""
    import torch

    from model.train import train

    torch.set_num_threads(1)
    by_tokens: dict[int, list[float]] = {}
    for seed in seeds:
        config = dataclasses.replace(quickstart(batch), seed=seed, noise_interval=1,
                                     sample_tokens=0)
        for record in train(config).records:
            by_tokens.setdefault(record.tokens, []).append(record.noise_scale)
        print(f"seed {seed}: " + " ".join(f"{values[-1]:.0f}" for values in by_tokens.values()),
              flush=True)
    print(f"B {batch}, seeds {seeds}\n| tokens | median | min–max | sd/mean of the finite |\n"
          "|---|---|---|---|")
    for tokens, values in by_tokens.items():
        finite = [v for v in values if math.isfinite(v)]
        print(f"| {tokens:,} | {statistics.median(values):.0f} | {min(values):.0f}–"
              f"{max(values):.0f} | {statistics.stdev(finite) / statistics.mean(finite):.0%} |")


def agreement(uri: str, studies: list[str]) -> None:
    """Per study and rung: the B of the trial with the lowest val_loss there, B_simple of that
    trial there, and the median B_simple of every trial measured there."""
    from mlflow import MlflowClient

    from tuner.store import runs

    client = MlflowClient(tracking_uri=uri)
    print("| study | tokens | best B (val_loss) | its B_simple | median B_simple (trials) | "
          "B's val_loss at those tokens |\n|---|---|---|---|---|---|")
    for name in studies:
        trials = runs.trial_runs(client, runs.study_parent(client, name))
        loss = {r.info.run_id: dict(runs.metric_points(client, r.info.run_id, "val_loss"))
                for r in trials}
        noise = {r.info.run_id: dict(runs.metric_points(client, r.info.run_id, "noise_scale"))
                 for r in trials}
        batch = {r.info.run_id: int(r.data.params["batch_size"]) for r in trials}
        for tokens in RUNGS:
            there = [run_id for run_id in loss if math.isfinite(loss[run_id].get(tokens, math.inf))]
            if not there:
                continue
            best = min(there, key=lambda run_id: loss[run_id][tokens])
            measured = [noise[run_id][tokens] for run_id in there if tokens in noise[run_id]]
            per_b = {}
            for run_id in there:
                b = batch[run_id]
                per_b[b] = min(per_b.get(b, math.inf), loss[run_id][tokens])
            print(f"| {name} | {tokens:,} | {batch[best]} ({loss[best][tokens]:.4f}) | "
                  f"{noise[best].get(tokens, math.nan):.0f} | "
                  f"{statistics.median(measured):.0f} ({len(measured)}) | "
                  + ", ".join(f"{b}: {v:.3f}" for b, v in sorted(per_b.items())) + " |")


def best_by_batch(batches: np.ndarray, val_loss: np.ndarray) -> list[tuple[int, float, int]]:
    """(B, lowest mean val_loss over the seeds, its configuration) for each B, best first, from a
    table's B column (N) and its val_loss at one point (N × seeds; NaN, inf: diverged)."""
    from tuner.search.trial.curve_table import diverged_as_inf

    means = diverged_as_inf(val_loss).mean(axis=1)
    best = []
    for b in np.unique(batches):
        at = np.flatnonzero(batches == b)
        config = int(at[np.argmin(means[at])])
        best.append((int(b), float(means[config]), config))
    return sorted(best, key=lambda row: row[1])


def table_agreement(path: Path) -> None:
    """At SHARES of the table's budget: the B whose best configuration is lowest and its margin
    over the next B (in the pooled seed sd), B_simple measured there by the best final
    configuration of each B trained with the table's seeds (its curves checked against the
    table's), and whether the probe's advice holds."""
    import torch

    from model.train import train
    from tuner.probe.batch import suggest
    from tuner.search.record.provenance import dataset_sha256
    from tuner.search.trial.curve_table import load
    from tuner.space import load_study
    from tuner.space.dataset_fit import study_dataset

    torch.set_num_threads(1)
    table, study = load(path), load_study(CURVES / "space.yaml")
    table.check_study(study)
    data, _ = study_dataset(study)
    table.check_dataset(dataset_sha256(data))
    names, sd = list(table.space), table.pooled_seed_sd
    batches = table.params[:, names.index("batch_size")]
    noise: dict[int, list[float]] = {}
    cpu = time.process_time()
    for b, final, config in best_by_batch(batches, table.val_loss[:, :, -1]):
        params = {name: float(v) for name, v in zip(names, table.params[config])}
        for seed in table.meta["seeds"]:
            run = dataclasses.replace(study.trial_config(params, data), seed=seed,
                                      noise_interval=1, sample_tokens=0)
            records = train(run).records
            for record in records:
                noise.setdefault(record.tokens, []).append(record.noise_scale)
            off = max(abs(r.val_loss - table.val_loss[config, table.seed_index(seed), i])
                      for i, r in enumerate(records))
            print(f"B {b}: configuration {config} (mean final {final:.4f}), seed {seed}: "
                  "B_simple " + " ".join(f"{r.noise_scale:.0f}" for r in records[7::8])
                  + f"; its val_loss off the table's by {off:.1e}", flush=True)
    print(f"{len(table.meta['seeds'])} seeds of {len(set(batches))} configurations: "
          f"{time.process_time() - cpu:.0f} CPU s\n"
          "| tokens | best B (margin, seed sd) | B's best val_loss | B_simple: median (min–max) "
          "| B/B_simple | probe's B's | winner among them | smallest B wins |\n"
          "|---|---|---|---|---|---|---|---|")
    for share in SHARES:
        at = round(share * len(table.tokens)) - 1
        ranked = best_by_batch(batches, table.val_loss[:, :, at])
        (b, loss, _), runner_up = ranked[0], ranked[1][1]
        measured = noise[int(table.tokens[at])]
        median = statistics.median(measured)
        probe = suggest(median, math.inf) if math.isfinite(median) else []  # ∞: none suggested
        print(f"| {table.tokens[at]:,} | {b} ({(runner_up - loss) / sd:.1f}) | "
              + ", ".join(f"{c}: {v:.3f}" for c, v, _ in sorted(ranked)) + f" | {median:.0f} "
              f"({min(measured):.0f}–{max(measured):.0f}) | {b / median:.2f} | "
              + (f"{probe[0]}–{probe[-1]} | {'yes' if b in probe else 'no'}" if probe
                 else "none | –") + f" | {'yes' if b == min(batches) else 'no'} |")


def at_equal_time(tokens: np.ndarray, batches: np.ndarray, val_loss: np.ndarray,
                  seconds: dict[int, float], spent: float) -> dict[int, tuple[float, float]]:
    """Each B's share of a full run trained in `spent` seconds (a run at B taking `seconds[B]`)
    and the lowest mean val_loss over its rows at its last evaluation by then, from a table's
    evaluation `tokens`, B column (N) and val_loss (N × seeds × points)."""
    reached = {}
    for b, run in seconds.items():
        share = min(1.0, spent / run)
        at = int(np.searchsorted(tokens, share * tokens[-1], side="right")) - 1
        rows = batches == b
        reached[b] = (share, best_by_batch(batches[rows], val_loss[rows, :, at])[0][1])
    return reached


def equal_time(path: Path) -> None:
    """At the time of a full run at each B (the table's mean CPU seconds at that B): each B's
    share of a run and best val_loss by then, and the lowest B with its margin over the next
    (in the pooled seed sd)."""
    from tuner.search.trial.curve_table import load
    from tuner.space import load_study

    table = load(path)
    table.check_study(load_study(CURVES / "space.yaml"))
    batches = table.params[:, list(table.space).index("batch_size")]
    seconds = {int(b): float(table.cpu_s[batches == b].mean()) for b in np.unique(batches)}
    print("| time (s): a full run at B | share of a run trained (" + ", ".join(map(str, seconds))
          + ") | each B's best val_loss then | best B (margin, seed sd) |\n|---|---|---|---|")
    for full_at, spent in sorted(seconds.items(), key=lambda item: item[1]):
        reached = at_equal_time(table.tokens, batches, table.val_loss, seconds, spent)
        (best, (_, loss)), (_, (_, runner_up)) = sorted(reached.items(),
                                                       key=lambda item: item[1][1])[:2]
        print(f"| {spent:.1f}: B {full_at} | "
              + ", ".join(f"{share:.0%}" for share, _ in reached.values()) + " | "
              + ", ".join(f"{v:.3f}" for _, v in reached.values())
              + f" | {best} ({(runner_up - loss) / table.pooled_seed_sd:.1f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    timed = commands.add_parser("cost")
    timed.add_argument("--steps", type=int, default=40)
    timed.add_argument("--measurements", type=int, default=10)
    seeded = commands.add_parser("spread")
    seeded.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    seeded.add_argument("--batch-size", type=int, default=16)
    compared = commands.add_parser("agreement")
    compared.add_argument("--tracking-uri", required=True)
    compared.add_argument("--study", action="append", required=True)
    tabled = commands.add_parser("table")
    tabled.add_argument("--table", type=Path, default=CURVES / "cosine.npz")
    tabled.add_argument("--equal-time", action="store_true",
                        help="each B at the table's CPU seconds a run, at equal time; no training")
    args = parser.parse_args()
    if args.command == "cost":
        cost(args.steps, args.measurements)
    elif args.command == "spread":
        spread(args.seeds, args.batch_size)
    elif args.command == "agreement":
        agreement(args.tracking_uri, args.study)
    else:
        from tuner.errors import UserError

        try:
            (equal_time if args.equal_time else table_agreement)(args.table)
        except UserError as err:  # a table that is not the curves of benchmarks/curves/space.yaml
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    main()
