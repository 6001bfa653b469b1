"""Study efficiency on the quickstart problem: ASHA + TPE against random search without early
stopping, and what the orchestration costs.

    uv run python benchmarks/study_efficiency.py [--seeds 0 1 2] [--space FILE] [--work DIR]
    uv run python benchmarks/study_efficiency.py --as-is 3 [--scale 4]
    uv run python benchmarks/study_efficiency.py --flat 12 noise [--seeds 0 1] [--asha-samples 48]
    uv run python benchmarks/study_efficiency.py --seeds 15 16 --random-best 0.3714 0.3628

For every seed it runs `tuner search` twice on search_spaces/quickstart.yaml (or `--space`):
random search with no scheduler (`--random-samples` full trials) and ASHA + TPE (`--asha-samples`
trials, by default about the same compute). From MLflow it rebuilds each study's best val_loss
against the tokens trained by all its trials so far, and prints markdown: how much of random
search's compute ASHA + TPE needs to reach random search's best, at the end and at every smaller
even number of full trials (goal: at most a third), the share of each study's wall time spent
inside training steps (goal: at least 90%) with where the rest went, and the start-up cost of a
trial. `--as-is N` runs the study file unchanged N times and reports only the orchestration;
`--scale K` makes its trials K times as long, to see how the fixed costs weigh on longer trials.
`--flat N MARGIN` runs ASHA + TPE for every seed as it is and with search.stop_when_flat
{trials: N, margin: MARGIN}, and reports the tokens the stop saved (net of its seed check's) and
whether the final best changed. `--random-best LOSS...` takes random search's final best for each
seed as recorded (docs/benchmarks.md, with `--random-samples` full trials) and runs only the study
file's own search, `--asha-samples` trials: the tokens it takes to reach that best.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from tuner.search.searchers.algorithms import stopping_points
from tuner.space.checks import STARTUP_SEARCHERS

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
TUNER = Path(sys.executable).with_name("tuner")


@dataclass
class Study:
    """One finished study as the benchmark measures it."""

    name: str
    wall_s: float  # the whole `tuner search` command
    driver_s: float  # the parent run: from the first callback to the last
    curve: list[tuple[int, float]]  # (tokens trained by all trials so far, best val_loss so far)
    train_s: float  # time inside training steps, summed over trials
    in_trial_s: float  # from each trainer's first step to its last report, summed over trials
    startups: list[tuple[int, float]]  # per trial (start time, seconds from its run's creation
    # to its trainer's first step)
    concurrency: int
    losses: list[dict[int, float]]  # per trial: val_loss by tokens seen
    spans: list[tuple[float, float]]  # per trial: its run's start and end, s after the parent's
    checkpoints: list[int]  # per trial: the checkpoints it reported to Tune
    checkpoint_mb: float  # the size of one

    def idle_parts(self) -> tuple[float, float, float, float]:
        """The slots' idle time before their first trial, between two trials, and after their
        last (the study's tail), the trials put in the slot that freed first; and the median
        gap between two trials."""
        ends = [0.0] * self.concurrency
        first, between, gaps = 0.0, 0.0, []
        for start, end in sorted(self.spans):
            slot = min(range(self.concurrency), key=ends.__getitem__)
            gap = max(start - ends[slot], 0.0)
            if ends[slot] == 0.0:
                first += gap
            else:
                between += gap
                gaps.append(gap)
            ends[slot] = end
        tail = sum(max(self.driver_s - end, 0.0) for end in ends)
        return first, between, tail, _median(gaps)

    @property
    def disk_mb_per_trial(self) -> float:
        """What checkpoints wrote to disk per trial: the trainer's file and Tune's copy of it."""
        return 2 * self.checkpoint_mb * sum(self.checkpoints) / len(self.checkpoints)

    @property
    def trials(self) -> int:
        return len(self.losses)

    @property
    def slot_s(self) -> float:
        """The trial slots' time: driver wall × concurrency."""
        return self.driver_s * self.concurrency

    def slot_time(self) -> dict[str, float]:
        """The slot time split by what filled it."""
        parts = {"training steps": self.train_s,
                 "in trials, outside steps": self.in_trial_s - self.train_s,
                 "trial start-up": sum(up for _, up in self.startups)}
        return {**parts, "idle": self.slot_s - sum(parts.values())}


def run_study(work: Path, name: str, overrides: dict[str, Any], base: Path = QUICKSTART,
              scale: int = 1) -> float:
    """Run `base` with `overrides` to its `search` section, and trials `scale` times as long
    (budget, evaluation interval and grace period alike); return the command's wall time."""
    space = yaml.safe_load(base.read_text())
    space["name"] = name
    space["search"].update(overrides)
    if "study_budget" not in overrides:  # the quickstart's: these studies run their samples
        space["search"].pop("study_budget", None)
    budget, asha = space["budget"], space["search"].get("asha", {})
    for where, key in ((budget, "tokens"), (budget, "eval_tokens"), (asha, "grace_period")):
        if key in where:
            where[key] *= scale
    if overrides.get("scheduler", "asha") != "asha":
        space["search"].pop("asha", None)
    if overrides.get("algorithm", "tpe") not in STARTUP_SEARCHERS:
        space["search"].pop("startup_trials", None)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False, allow_unicode=True))
    start = time.monotonic()
    proc = subprocess.run([str(TUNER), "search", "--space", str(path), "--tracking-uri",
                           f"sqlite:///{work / 'mlflow.db'}", "--storage", str(work / "ray")],
                          cwd=work, capture_output=True, text=True,
                          env={**os.environ, "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"})
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.monotonic() - start


def measure(work: Path, name: str, wall_s: float, concurrency: int) -> Study:
    """Rebuild a study's curve, training time and trial start-ups from its MLflow runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("tuner.role") == "study")
    trials = [r for r in runs if r.data.tags.get("tuner.role") == "trial"]
    events, train_s, in_trial_s, startups, losses = [], 0.0, 0.0, [], []
    opened = parent.info.start_time / 1000
    spans = [(r.info.start_time / 1000 - opened, r.info.end_time / 1000 - opened) for r in trials]
    for run in trials:
        history = {key: sorted(client.get_metric_history(run.info.run_id, key),
                               key=lambda m: m.step)
                   for key in ("val_loss", "tokens_per_s", "elapsed_s")}
        losses.append({m.step: m.value for m in history["val_loss"]})
        previous = 0
        for loss, speed in zip(history["val_loss"], history["tokens_per_s"]):
            events.append((loss.timestamp, run.info.run_id, loss.step, loss.value))
            train_s += (loss.step - previous) / speed.value if speed.value > 0 else 0.0
            previous = loss.step
        if history["val_loss"]:
            first, last = history["val_loss"][0], history["val_loss"][-1]
            first_step = first.timestamp / 1000 - history["elapsed_s"][0].value
            startups.append((run.info.start_time, first_step - run.info.start_time / 1000))
            in_trial_s += last.timestamp / 1000 - first_step
    tokens: dict[str, int] = {}
    best, curve = math.inf, []
    for _, run_id, step, value in sorted(events):
        tokens[run_id] = step
        best = min(best, value)
        curve.append((sum(tokens.values()), best))
    driver_s = (parent.info.end_time - parent.info.start_time) / 1000
    return Study(name, wall_s, driver_s, curve, train_s, in_trial_s, startups, concurrency, losses,
                 spans, *checkpoints_kept(work / "ray" / name))


def checkpoints_kept(folder: Path) -> tuple[list[int], float]:
    """The checkpoints each trial of the study in `folder` reported to Tune (its results that name
    one), and the size of one in MB."""
    counts = [sum(1 for line in path.read_text().splitlines()
                  if json.loads(line).get("checkpoint_dir_name"))
              for path in folder.glob("trial_*/result.json")]
    sizes = [path.stat().st_size for path in folder.glob("trial_*/checkpoint_*/checkpoint.pt")]
    return counts, (max(sizes) / 1e6 if sizes else 0.0)


def best_at(curve: list[tuple[int, float]], tokens: float) -> float:
    """The best val_loss once `tokens` tokens had been trained."""
    return min((loss for spent, loss in curve if spent <= tokens), default=math.inf)


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float:
    """Tokens trained before the best val_loss first reached `target` (inf: never)."""
    return next((spent for spent, loss in curve if loss <= target), math.inf)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else math.nan


def by_compute(pairs: list[tuple[int, Study, Study]]) -> list[str]:
    """The goal at every even number of random search's full trials: ASHA + TPE's tokens to reach
    random search's best at that compute, as a share of it (the curves' prefixes)."""
    seeds = [seed for seed, _, _ in pairs]
    lines = [("ASHA + TPE's tokens to reach random search's best at a given compute, as a share "
             "of that compute:"), "",
             "| random search's compute (full trials) | " + " | ".join(
                 f"seed {seed}" for seed in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for trials in range(2, pairs[0][1].trials + 1, 2):
        cells = []
        for _, rnd, asha in pairs:
            spent = trials * rnd.curve[-1][0] / rnd.trials
            reach = tokens_to_reach(asha.curve, best_at(rnd.curve, spent))
            cells.append(f"{reach / spent:.0%}" if math.isfinite(reach) else "not reached")
        lines.append(f"| {trials} | " + " | ".join(cells) + " |")
    return lines


def loss_at(losses: dict[int, float], tokens: int) -> float:
    """A trial's val_loss at its first evaluation at or past `tokens` (inf: it ended before)."""
    return next((losses[step] for step in sorted(losses) if step >= tokens), math.inf)


def _ranks(values: list[float]) -> list[int]:
    """Each value's rank (1 = lowest) among `values`."""
    order = sorted(range(len(values)), key=values.__getitem__)
    return [order.index(i) + 1 for i in range(len(values))]


def rung_ranks(pairs: list[tuple[int, Study, Study]], rungs: list[int], factor: float,
               top: int = 4) -> list[str]:
    """How well each rung predicts the end: where random search's best full trials ranked (by
    val_loss at the first evaluation at or past the rung) among all its trials."""
    lines = [(f"Rank at each ASHA rung ({' / '.join(f'{r:,}' for r in rungs)} tokens) of random "
              f"search's {top} best full trials; ASHA keeps the best 1/{factor:g} at a rung:"), "",
             "| seed | " + " | ".join(f"final #{i + 1}" for i in range(top)) + " |",
             "|---|" + "---|" * top]
    for seed, rnd, _ in pairs:
        full = [h for h in rnd.losses if h]
        rank = {rung: _ranks([loss_at(h, rung) for h in full]) for rung in rungs}
        best = sorted(range(len(full)), key=lambda i: full[i][max(full[i])])[:top]
        cells = [" / ".join(str(rank[r][i]) for r in rungs) + f" of {len(full)}" for i in best]
        lines.append(f"| {seed} | " + " | ".join(cells + [""] * (top - len(cells))) + " |")
    return lines


def report(pairs: list[tuple[int, Study, Study]], study: Any) -> str:
    """The markdown for docs/benchmarks.md: the compute comparison, then the orchestration."""
    lines = [("| seed | random: trials, tokens | random: final best | ASHA+TPE: trials, tokens "
             "| ASHA+TPE best at ⅓ of random's tokens | ASHA+TPE tokens to reach random's best |"),
             "|---|---|---|---|---|---|"]
    ratios = []
    for seed, rnd, asha in pairs:
        spent, final = rnd.curve[-1]
        reach = tokens_to_reach(asha.curve, final)
        ratios.append(reach / spent)
        lines.append(f"| {seed} | {rnd.trials}, {spent:,} | {final:.4f} | {asha.trials}, "
                     f"{asha.curve[-1][0]:,} | {best_at(asha.curve, spent / 3):.4f} | "
                     + (f"{reach:,.0f} ({reach / spent:.0%} of random's)" if math.isfinite(reach)
                        else "not reached") + " |")
    met = sum(r <= 1 / 3 for r in ratios)
    median = sorted(ratios)[len(ratios) // 2]
    lines += ["", (f"ASHA + TPE reached random search's final best within a third of its compute "
                  f"for {met} of {len(ratios)} seeds (median: {median:.0%} of its compute)."), "",
              *by_compute(pairs), "",
              *rung_ranks(pairs, [int(rung) for rung in stopping_points(study) or ()],
                          study.search.asha.reduction_factor),
              "", orchestration([s for _, *ss in pairs for s in ss])]
    return "\n".join(lines)


def orchestration(studies: list[Study]) -> str:
    """Each study's walls, share of slot time inside training steps and trial start-ups, then
    where its slot time went."""
    lines = [("| study | wall (command) | wall (driver) | inside training steps | share of driver "
             "wall × concurrency | trial start-up (median): new actor / reused | checkpoints "
             "a trial, disk written |"), "|---|---|---|---|---|---|---|"]
    for s in studies:
        ups = [up for _, up in sorted(s.startups)]
        cold, warm = ups[:s.concurrency], ups[s.concurrency:]
        share = s.train_s / s.slot_s
        lines.append(f"| {s.name} | {s.wall_s:.0f} s | {s.driver_s:.0f} s | {s.train_s:.0f} s "
                     f"| {share:.0%} | {_median(cold):.1f} s / {_median(warm):.1f} s "
                     f"| {sum(s.checkpoints) / len(s.checkpoints):.1f}, "
                     f"{s.disk_mb_per_trial:.1f} MB |")
    lines += ["", *slot_time_table(studies), "", ("| study | idle before the first trials | "
              "idle between two trials (median gap) | idle after the last (the tail) |"),
              "|---|---|---|---|"]
    for s in studies:
        first, between, tail, gap = s.idle_parts()
        lines.append(f"| {s.name} | {first:.1f} s | {between:.1f} s ({gap:.2f} s) | {tail:.1f} s |")
    return "\n".join(lines)


def slot_time_table(studies: list[Study]) -> list[str]:
    """Where each study's slot time (driver wall × concurrency) went, as shares of it."""
    heads = list(studies[0].slot_time())
    lines = ["| study | slot time | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for s in studies:
        parts = s.slot_time()
        lines.append(f"| {s.name} | {s.slot_s:.0f} s | " + " | ".join(
            f"{parts[h]:.1f} s ({parts[h] / s.slot_s:.0%})" for h in heads) + " |")
    return lines


def seed_check_tokens(work: Path, name: str) -> int:
    """Tokens trained by the confirmation runs (seed checks) of study `name`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000,
                              filter_string="tags.`tuner.role` = 'confirmation'")
    return sum(max((int(m.step) for m in client.get_metric_history(r.info.run_id, "val_loss")),
                   default=0) for r in runs)


def flat_report(rows: list[tuple[int, Study, Study, int, str]]) -> str:
    """Each seed's full study against the one stopped when flat: trials, tokens, final best."""
    lines = [("| seed | all trials: trials, tokens, best | stopped when flat: trials, tokens "
             "(+ seed check), best | tokens saved | best changed |"), "|---|---|---|---|---|"]
    for seed, full, flat, check, _ in rows:
        saved = full.curve[-1][0] - flat.curve[-1][0] - check
        lines.append(f"| {seed} | {full.trials}, {full.curve[-1][0]:,}, {full.curve[-1][1]:.4f} "
                     f"| {flat.trials}, {flat.curve[-1][0]:,} (+ {check:,}), "
                     f"{flat.curve[-1][1]:.4f} | {saved:,} ({saved / full.curve[-1][0]:.0%}) "
                     f"| {flat.curve[-1][1] - full.curve[-1][1]:+.4f} |")
    return "\n".join([*lines, "", *(f"seed {seed}: {reason}" for seed, *_, reason in rows)])


def flat_runs(work: Path, args: argparse.Namespace, concurrency: int) -> str:
    """Per seed, ASHA + TPE as it is and stopped when flat: the markdown comparing them."""
    from mlflow import MlflowClient

    trials, margin = int(args.flat[0]), args.flat[1]
    setting = {"trials": trials, "margin": margin if margin == "noise" else float(margin)}
    rows = []
    for seed in args.seeds:
        base = {"algorithm": "tpe", "scheduler": "asha", "num_samples": args.asha_samples,
                "seed": seed}
        stamp = int(time.time())
        full = _run_and_measure(work, f"asha-tpe-s{seed}-{stamp}", base, args.space, concurrency)
        name = f"flat-s{seed}-{stamp}"
        flat = _run_and_measure(work, name, {**base, "stop_when_flat": setting}, args.space,
                                concurrency)
        client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
        parent = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                                    filter_string="tags.`tuner.role` = 'study'")[0]
        rows.append((seed, full, flat, seed_check_tokens(work, name),
                     parent.data.tags.get("tuner.stop_reason", "not stopped")))
    return flat_report(rows)


def shipped_runs(work: Path, args: argparse.Namespace, study: Any) -> str:
    """Per seed, the study file's own search against random search's recorded final best: the
    markdown of the tokens it took to reach it, as shares of random search's."""
    spent = args.random_samples * study.full_trial_tokens()
    lines = [(f"| seed | random search's best (recorded, {args.random_samples} full trials) | "
             "shipped: trials, tokens, best | tokens to reach random's best |"), "|---|---|---|---|"]
    shares = []
    for seed, target in zip(args.seeds, args.random_best, strict=True):
        run = _run_and_measure(work, f"shipped-s{seed}-{int(time.time())}",
                               {"num_samples": args.asha_samples, "seed": seed}, args.space,
                               study.search.max_concurrent)
        reach = tokens_to_reach(run.curve, target)
        shares.append(reach / spent)
        lines.append(f"| {seed} | {target:.4f} | {run.trials}, {run.curve[-1][0]:,}, "
                     f"{run.curve[-1][1]:.4f} | " + (f"{reach:,.0f} ({reach / spent:.0%})"
                                                     if math.isfinite(reach) else "not reached")
                     + " |")
    return "\n".join([*lines, "", f"median: {_median(shares):.0%} of random search's tokens"
                       if math.isfinite(_median(shares)) else "median: not reached"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--random-samples", type=int, default=12)
    parser.add_argument("--asha-samples", type=int, default=24)
    parser.add_argument("--work", type=Path, default=Path("runs/study_efficiency"))
    parser.add_argument("--space", type=Path, default=QUICKSTART, help="the study to run")
    parser.add_argument("--as-is", type=int, default=0, metavar="N",
                        help="instead of the comparison, run the study file unchanged N times "
                             "and report only its orchestration")
    parser.add_argument("--scale", type=int, default=1, metavar="K",
                        help="with --as-is: trials K times as long (budget.tokens, "
                             "budget.eval_tokens and the ASHA grace period times K)")
    parser.add_argument("--flat", nargs=2, metavar=("N", "MARGIN"),
                        help="instead of the comparison, ASHA + TPE as it is and with "
                             "search.stop_when_flat {trials: N, margin: MARGIN}")
    parser.add_argument("--random-best", type=float, nargs="+", metavar="LOSS",
                        help="random search's recorded final best for each of --seeds: run only "
                             "the study file's own search")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    from tuner.space import load_study

    study = load_study(args.space)  # the schema's defaults resolved (grace period, concurrency)
    concurrency = study.search.max_concurrent
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("ray", "optuna", "mlflow", "torch"))
    header = (f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
              f"Python {platform.python_version()}, {versions}\n")
    if args.as_is:
        studies = [_run_and_measure(work, f"as-is-{i}-{int(time.time())}", {}, args.space,
                                    concurrency, args.scale) for i in range(args.as_is)]
        print(header)
        print(orchestration(studies))
        return
    if args.random_best:
        table = shipped_runs(work, args, study)
        print(header)
        print(table)
        return
    if args.flat:
        table = flat_runs(work, args, concurrency)
        print(header)
        print(table)
        return
    pairs = []
    for seed in args.seeds:
        studies = [_run_and_measure(work, f"{method}-s{seed}-{int(time.time())}",
                                    {**overrides, "seed": seed}, args.space, concurrency)
                   for method, overrides in (
                       ("random", {"algorithm": "random", "scheduler": "none",
                                   "num_samples": args.random_samples}),
                       ("asha-tpe", {"algorithm": "tpe", "scheduler": "asha",
                                     "num_samples": args.asha_samples}))]
        pairs.append((seed, *studies))
    (work / "curves.json").write_text(json.dumps({s.name: s.curve for _, *ss in pairs
                                                  for s in ss}))
    print(header)
    print(report(pairs, study))


def _run_and_measure(work: Path, name: str, overrides: dict[str, Any], space: Path,
                     concurrency: int, scale: int = 1) -> Study:
    wall = run_study(work, name, overrides, space.resolve(), scale)
    print(f"{name}: {wall:.0f} s", file=sys.stderr, flush=True)
    return measure(work, name, wall, concurrency)


if __name__ == "__main__":
    main()
