"""How well does a trial's score part-way through predict its final val_loss? N random trials of a
study, trained to the end without early stopping, scored at every evaluation.

    uv run python benchmarks/rung_fidelity.py [--space FILE] [--samples 16]
        [--seeds 0 1] [--schedule cosine|wsd] [--reduction-factor F] [--alpha-max-range LO HI]
    uv run python benchmarks/rung_fidelity.py --tiny          # a few seconds: the code end to end

For each seed it draws `--samples` configurations from the study's space (Optuna's random
sampler and the trials' training both seeded with it), trains each in-process with
model.train.train (`--workers` processes, one thread each), evaluating every 1/`--evaluations`
of the budget, and reports at each evaluation:
Spearman's ρ between a score and the final val_loss, the ranks of the final best and of the final
top four by that score, and how many of the final top four ASHA would keep there (Ray's cutoff:
the best 1/reduction_factor of the trials at a rung). The scores: the plain val_loss (what ASHA
ranks today), the learning-rate-annealing law of Tissue et al. 2024 (arXiv 2408.11029) fitted to
the curve so far and extrapolated to the full schedule, a power law in steps fitted likewise, and
the mean of the last three evaluations. The same trials are scored at the study's own rungs
(with its reduction factor, or `--reduction-factor`) and at lm.yaml's (its rungs' fractions of a
full trial and reduction factor, read from the file): a CPU-sized copy of lm.yaml's rungs. Last, whether each
candidate beats the plain loss (`verdicts`). Trials' curves are kept in WORK/<run>.json and reused
when the same run is asked for again.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
import warnings
from typing import Any, Callable

import numpy as np
import yaml
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.stats import rankdata, spearmanr

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
LM_YAML = REPO / "search_spaces" / "lm.yaml"
TOP = 4  # the final top trials whose fate at each rung is reported
ANNEALING_DECAY = 0.999  # λ of the annealing area's momentum (Tissue et al.'s value)
TINY = {"samples": 4, "tokens": 40_960, "evaluations": 8}


@dataclass
class Trial:
    """One trained configuration: its drawn values, its schedule and its evaluations."""

    params: dict[str, Any]
    lrs: list[float]  # α_t of every step t of the full run
    steps: list[int]  # the step of each evaluation
    losses: list[float]  # val_loss at each evaluation
    status: str

    def curve(self, evaluations: int) -> tuple[np.ndarray, np.ndarray]:
        """(steps, val_losses) of its first `evaluations` evaluations."""
        return np.array(self.steps[:evaluations]), np.array(self.losses[:evaluations])


def study_spec(space: Path, schedule: str | None, alpha_range: tuple[float, float] | None,
               evaluations: int, tiny: bool) -> dict[str, Any]:
    """The study file's mapping with this benchmark's changes: the schedule and α_max range
    given, and an evaluation every 1/`evaluations` of the budget."""
    spec = yaml.safe_load(space.read_text())
    hparams = spec["hparams"]
    if schedule:
        hparams["schedule"] = schedule
    if alpha_range:
        hparams.pop("lr_max", None)
        hparams["α_max"] = {"loguniform": list(alpha_range)}
    if tiny:
        spec["budget"]["tokens"] = TINY["tokens"]
        spec["search"].setdefault("asha", {})["grace_period"] = TINY["tokens"] // 8
    spec["budget"]["eval_tokens"] = spec["budget"]["tokens"] // evaluations
    return spec


def rung_fractions(study: Any) -> list[float]:
    """The study's ASHA rungs short of a full trial, as fractions of it."""
    from tuner.search.searchers.algorithms import stopping_points

    tokens = study.full_trial_tokens()
    return [rung / tokens for rung in stopping_points(study) if rung < tokens]


def draw(study: Any, samples: int, seed: int) -> list[dict[str, Any]]:
    """`samples` configurations from the study's space, Optuna's random sampler seeded."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [study.sample(sampler.ask()) for _ in range(samples)]


def train_one(config: Any) -> tuple[list[int], list[float], str]:
    """Train `config` to the end on one thread: each evaluation's step and val_loss, the status."""
    import torch

    from model.train import train

    torch.set_num_threads(1)
    result = train(config)
    return [r.step for r in result.records], [r.val_loss for r in result.records], result.status


def run_trials(study: Any, seed: int, samples: int, workers: int) -> list[Trial]:
    """Draw the trials of sampler seed `seed` and train them, `workers` at a time."""
    from model.schedules import LRSchedule
    from tuner.datasets import prepare_dataset

    data = study.data.path or prepare_dataset(**study.data.prepare_kwargs(), progress=False)
    drawn = draw(study, samples, seed)
    configs = [study.trial_config(params, data) for params in drawn]
    if workers == 1:
        results = [train_one(config) for config in configs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.map(train_one, configs, chunksize=1)
    trials = []
    for params, config, (steps, losses, status) in zip(drawn, configs, results):
        schedule = LRSchedule.from_config(config)
        trials.append(Trial(params, [schedule.lr(t) for t in range(config.steps)], steps, losses,
                            status))
    return trials


def annealing_areas(lrs: np.ndarray, decay: float = ANNEALING_DECAY) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """S1 and S2 after each step s = 1..len(lrs): the forward area Σ α_t, and the annealing area
    Σ_i m_i with m_i = λ·m_{i−1} + (α_{i−1} − α_i), counting only decreases (a warmup's rise is
    no annealing)."""
    s1 = np.cumsum(lrs)
    drops = np.maximum(-np.diff(lrs, prepend=lrs[0]), 0.0)
    momentum, m = np.empty_like(drops), 0.0
    for i, drop in enumerate(drops):
        m = decay * m + drop
        momentum[i] = m
    return s1, np.cumsum(momentum)


def annealing_law(x: tuple[np.ndarray, np.ndarray], l0: float, a: float, alpha: float,
                  c: float) -> np.ndarray:
    """L = L0 + A·S1^(−α) − C·S2."""
    s1, s2 = x
    return l0 + a * s1 ** -alpha - c * s2


def fit_annealing_law(s1: np.ndarray, s2: np.ndarray, losses: np.ndarray) -> np.ndarray | None:
    """L0, A, α, C fitted to `losses` at areas (s1, s2), all ≥ 0; None with fewer points than
    parameters or no convergence."""
    if len(losses) < 4 or not np.all(np.isfinite(losses)):
        return None
    start = [0.5 * losses.min(), (losses[0] - 0.5 * losses.min()) * s1[0] ** 0.5, 0.5, 0.0]
    return _fit(annealing_law, (s1, s2), losses, start,
                ([0, 0, 0, 0], [losses.min(), np.inf, 3, np.inf]))


def _fit(law: Callable[..., np.ndarray], x: Any, losses: np.ndarray, start: list[float],
         bounds: tuple[list[float], list[float]]) -> np.ndarray | None:
    """`law`'s parameters fitted by least squares within `bounds`; None if it does not converge
    (a fit with fewer points than parameters has no covariance: that is not a failure)."""
    try:
        with warnings.catch_warnings(action="ignore", category=OptimizeWarning):
            return curve_fit(law, x, losses, p0=start, bounds=bounds, maxfev=5000)[0]
    except (RuntimeError, ValueError):
        return None


def power_law(steps: np.ndarray, e: float, b: float, beta: float) -> np.ndarray:
    """L = E + B·steps^(−β)."""
    return e + b * steps ** -beta


def score_loss(trial: Trial, upto: int) -> float:
    """The val_loss at the trial's latest evaluation (ASHA's score today)."""
    return trial.curve(upto)[1][-1]


def score_mean3(trial: Trial, upto: int) -> float:
    """The mean val_loss of the latest three evaluations."""
    return float(np.mean(trial.curve(upto)[1][-3:]))


def score_annealing_law(trial: Trial, upto: int) -> float:
    """The annealing law fitted to the curve so far, at the full schedule's areas; the plain loss
    where it cannot be fitted."""
    steps, losses = trial.curve(upto)
    s1, s2 = annealing_areas(np.array(trial.lrs))
    params = fit_annealing_law(s1[steps - 1], s2[steps - 1], losses)
    if params is None:
        return losses[-1]
    return float(annealing_law((s1[-1], s2[-1]), *params))


def score_power_law(trial: Trial, upto: int) -> float:
    """E + B·steps^(−β) fitted to the curve so far, at the run's last step; the plain loss where
    it cannot be fitted."""
    steps, losses = trial.curve(upto)
    if len(losses) < 3 or not np.all(np.isfinite(losses)):
        return losses[-1]
    params = _fit(power_law, steps, losses, [0.5 * losses.min(), losses[0], 0.5],
                  ([0, 0, 0], [losses.min(), np.inf, 3]))
    return losses[-1] if params is None else float(power_law(len(trial.lrs), *params))


SCORES: dict[str, Callable[[Trial, int], float]] = {
    "loss": score_loss, "annealing law": score_annealing_law, "power law": score_power_law,
    "mean of 3": score_mean3}


def spearman(scores: list[float], finals: list[float]) -> float:
    """Spearman's ρ of two lists, a diverged trial's inf or NaN ranking last."""
    return float(spearmanr(_finite(scores), _finite(finals)).statistic)


def _finite(values: list[float]) -> np.ndarray:
    values = np.array(values, dtype=float)
    return np.where(np.isfinite(values), values, np.inf)


def ranks(values: list[float]) -> list[int]:
    """Each value's rank among `values`, 1 the lowest (ties share the better rank)."""
    return [int(r) for r in rankdata(_finite(values), method="min")]


def kept_count(trials: int, reduction_factor: float) -> int:
    """How many of `trials` distinct scores at a full rung pass Ray's ASHA cutoff: a trial goes on
    if its reward (−loss) is at or above the rewards' (1 − 1/rf) percentile."""
    rewards = np.arange(trials)
    return int(np.sum(rewards >= np.nanpercentile(rewards, (1 - 1 / reduction_factor) * 100)))


def kept_of_top(scores: list[float], finals: list[float], reduction_factor: float,
                top: int = TOP) -> int:
    """How many of the final best `top` trials ASHA would keep on `scores`."""
    keep = kept_count(len(scores), reduction_factor)
    best = np.argsort(_finite(finals), kind="stable")[:top]
    return sum(ranks(scores)[i] <= keep for i in best)


def fidelity(trials: list[Trial], upto: int, score: Callable[[Trial, int], float],
             reduction_factor: float) -> dict[str, Any]:
    """ρ, the final top four's ranks and how many of them ASHA keeps, scoring every trial on its
    first `upto` evaluations (a trial that diverged before scores inf)."""
    finals = [t.losses[-1] if t.status == "completed" else math.inf for t in trials]
    scores = [score(t, upto) if len(t.losses) >= upto else math.inf for t in trials]
    order = np.argsort(_finite(finals), kind="stable")[:TOP]
    by_score = ranks(scores)
    return {"rho": spearman(scores, finals), "top_ranks": [by_score[i] for i in order],
            "kept": kept_of_top(scores, finals, reduction_factor)}


def run_name(args: argparse.Namespace, seed: int) -> str:
    """The run's file name: what it trained, and how."""
    parts = [args.space.stem, args.schedule or "",
             "alpha-" + "-".join(f"{a:g}" for a in args.alpha_max_range)
             if args.alpha_max_range else "", f"n{args.samples}", f"e{args.evaluations}",
             "tiny" if args.tiny else "", f"s{seed}"]
    return "-".join(filter(None, parts))


def seeded_study(spec: dict[str, Any], seed: int) -> Any:
    """The study of `spec` with no scheduler, its trials trained from seed `seed`."""
    from tuner.space.schema import build_study

    search = {k: v for k, v in spec["search"].items() if k not in ("asha", "startup_trials")}
    return build_study({**spec, "budget": {**spec["budget"], "seed": seed},
                        "search": {**search, "algorithm": "random", "scheduler": "none"}})


def load_or_run(args: argparse.Namespace, spec: dict[str, Any], seed: int) -> list[Trial]:
    """The seed's trials from WORK/<run>.json, else trained now and written there."""
    path = args.work / f"{run_name(args, seed)}.json"
    if path.exists():
        return [Trial(**t) for t in json.loads(path.read_text())]
    start = time.monotonic()
    trials = run_trials(seeded_study(spec, seed), seed, args.samples, args.workers)
    print(f"{path.stem}: {len(trials)} trials in {time.monotonic() - start:.0f} s (shared "
          "machine)", file=sys.stderr, flush=True)
    path.write_text(json.dumps([t.__dict__ for t in trials]))
    return trials


def evaluation_table(trials: list[Trial], reduction_factor: float, tokens: int) -> list[str]:
    """A row per evaluation for the plain loss."""
    count = max(len(t.losses) for t in trials)
    lines = [f"| evaluation | tokens | ρ | final top {TOP}: ranks | kept of them "
             f"(1/{reduction_factor:g}) |", "|---|---|---|---|---|"]
    for upto in range(1, count + 1):
        f = fidelity(trials, upto, score_loss, reduction_factor)
        lines.append(f"| {upto} | {tokens * upto // count:,} | {f['rho']:.2f} | "
                     f"{', '.join(map(str, f['top_ranks']))} | {f['kept']} |")
    return lines


def rung_table(runs: dict[int, list[Trial]], fractions: list[float],
               reduction_factor: float) -> list[str]:
    """Each score's ρ, kept-of-top-four and top-four ranks at each rung, the seeds side by side."""
    lines = ["| rung | score | " + " | ".join(f"seed {s}: ρ, kept, top-{TOP} ranks" for s in runs)
             + " |", "|---|---|" + "---|" * len(runs)]
    for fraction in fractions:
        for name, score in SCORES.items():
            cells = []
            for trials in runs.values():
                f = fidelity(trials, at_fraction(trials, fraction), score, reduction_factor)
                cells.append(f"{f['rho']:.2f}, {f['kept']}, {'/'.join(map(str, f['top_ranks']))}")
            lines.append(f"| {fraction:.3g} | {name} | " + " | ".join(cells) + " |")
    return lines


def at_fraction(trials: list[Trial], fraction: float) -> int:
    """The evaluations up to the first at or past `fraction` of a full trial."""
    count = max(len(t.losses) for t in trials)
    return math.ceil(round(fraction * count, 9))


def verdicts(figures: dict[int, dict[str, list[dict[str, Any]]]]) -> list[str]:
    """Whether each candidate earns a study setting on these rungs: in every seed a higher ρ at
    the first rung than the plain loss, and at every rung at least as many of the final top four
    kept, more at one rung at least."""
    lines = []
    for name in list(SCORES)[1:]:
        misses = []
        for seed, scores in figures.items():
            ours, plain = scores[name], scores["loss"]
            if ours[0]["rho"] <= plain[0]["rho"]:
                misses.append(f"seed {seed}: ρ {ours[0]['rho']:.2f} ≤ {plain[0]['rho']:.2f} "
                              "at the first rung")
            kept = [(a["kept"], b["kept"]) for a, b in zip(ours, plain)]
            if any(a < b for a, b in kept) or all(a == b for a, b in kept):
                misses.append(f"seed {seed}: keeps {', '.join(str(a) for a, _ in kept)} of the "
                              f"top {TOP} against {', '.join(str(b) for _, b in kept)}")
        lines.append(f"- {name}: " + ("better than the plain loss" if not misses else
                                      "rejected (" + "; ".join(misses) + ")"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, default=QUICKSTART, help="the study file")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--schedule", choices=("cosine", "wsd"), help="override the schedule")
    parser.add_argument("--reduction-factor", type=float,
                        help="default: the study's search.asha.reduction_factor")
    parser.add_argument("--alpha-max-range", type=float, nargs=2, metavar=("LO", "HI"),
                        help="α_max log-uniform in [LO, HI] (e.g. up to the divergence edge)")
    parser.add_argument("--evaluations", type=int, default=64, help="evaluations in a trial")
    parser.add_argument("--workers", type=int, default=2, help="trials trained at once")
    parser.add_argument("--work", type=Path, default=Path("runs/rung_fidelity"))
    parser.add_argument("--tiny", action="store_true", help="a few short trials: the code alone")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.tiny:
        args.samples, args.evaluations = TINY["samples"], TINY["evaluations"]
    args.work.mkdir(parents=True, exist_ok=True)
    from tuner.space import load_study
    from tuner.space.schema import build_study

    spec = study_spec(args.space, args.schedule, args.alpha_max_range, args.evaluations,
                      args.tiny)
    study, lm = build_study(spec), load_study(LM_YAML)
    rung_sets = {"the study's": (rung_fractions(study), args.reduction_factor
                                 or study.search.asha.reduction_factor),
                 "lm.yaml's": (rung_fractions(lm), lm.search.asha.reduction_factor)}
    runs = {seed: load_or_run(args, spec, seed) for seed in args.seeds}
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "optuna", "scipy"))
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, Python "
          f"{platform.python_version()}, {versions}")
    tokens = study.full_trial_tokens()
    for seed, trials in runs.items():
        diverged = sum(t.status != "completed" for t in trials)
        best = min(trials, key=lambda t: t.losses[-1] if t.status == "completed" else math.inf)
        print(f"\n{run_name(args, seed)}: {len(trials)} trials, {diverged} diverged; final best "
              f"{best.losses[-1]:.4f} at α_max {best.params.get('lr_max', math.nan):.4g}\n")
        print("\n".join(evaluation_table(trials, rung_sets["the study's"][1], tokens)))
    figures = {}
    for label, (fractions, factor) in rung_sets.items():
        print(f"\nAt {label} rungs ({', '.join(f'{f:.3g}' for f in fractions)} of a full trial), "
              f"reduction factor {factor:g} (keeps {kept_count(args.samples, factor)} of "
              f"{args.samples}):\n")
        print("\n".join(rung_table(runs, fractions, factor)))
        figures[label] = {seed: {name: [fidelity(trials, at_fraction(trials, f), score, factor)
                                        for f in fractions] for name, score in SCORES.items()}
                          for seed, trials in runs.items()}
        print("\n" + "\n".join(verdicts(figures[label])))
    if args.json:
        args.json.write_text(json.dumps(figures))


if __name__ == "__main__":
    main()
