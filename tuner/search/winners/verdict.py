"""The seed check's verdict: is the winner's lead over each rival larger than the seed noise?

One variance for every trial checked (their seeds pooled, with their degrees of freedom: the noise
is the training's, not a trial's), a one-sided t-test of "the winner's mean is lower" against
each rival, Holm's correction across the rivals. With ≥ 3 seeds a trial, Bartlett's test checks
the pooling (Brown–Forsythe's, robust to the seed noise's heavy tails, cannot reject at 3 seeds;
Bartlett's holds its level on the table's noise: docs/benchmarks.md); where it rejects, Welch's
one-sided test decides instead. Welch's two-sided figure is kept in the record. And the seeds a
trial would need to confirm a lead at the pooled sd.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from tuner.output import count

ALPHA = 0.05  # a lead is significant at a Holm-corrected one-sided p < ALPHA
POWER = 0.8  # the chance to confirm a real lead that the seeds advised aim for
MOST_SEEDS = 101  # a trial's own run and `--seeds`'s 100 further ones


@dataclass
class Seeded:
    """One trial's final val_loss at each seed: its own run's and its confirmations'."""

    trial_id: str
    run_id: str
    losses: dict[int, float]  # seed -> final val_loss

    @property
    def mean(self) -> float:
        return statistics.fmean(self.losses.values())

    @property
    def sd(self) -> float:
        """The sample standard deviation over the seeds (nan with one seed)."""
        return statistics.stdev(self.losses.values()) if len(self.losses) > 1 else math.nan


@dataclass(frozen=True)
class Pooled:
    """The seed sd pooled over the trials, its degrees of freedom, and Bartlett's p for equal
    variances (None: a trial has fewer than 3 seeds, or there is one trial)."""

    sd: float
    df: int
    spread_p: float | None = None

    @property
    def holds(self) -> bool:
        return self.spread_p is None or self.spread_p >= ALPHA


@dataclass
class Rival:
    """The winner's test against a rival: `t` > 0 where the winner leads, `p` one-sided and
    Holm-corrected; Welch's two-sided t and p beside it, for the record."""

    trial_id: str
    lead: float  # the rival's mean minus the winner's
    lead_sd: float  # the lead in pooled seed sd
    t: float
    df: float
    se: float  # the standard error of the lead that `t` divides it by
    p: float
    welch_t: float  # the winner's mean minus the rival's, as Welch's test gives it
    welch_p: float

    @property
    def significant(self) -> bool:
        return self.lead > 0 and self.p < ALPHA

    def smallest_lead(self) -> float:
        """The least lead these seeds confirm at one-sided α (the Holm level of the closest rival
        where every other is confirmed)."""
        from scipy import stats

        return float(stats.t.isf(ALPHA, self.df)) * self.se

    def record(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "lead": self.lead, "lead_in_seed_sd": self.lead_sd,
                "t": self.t, "df": self.df, "p_one_sided_holm": self.p,
                "significant": self.significant,
                "welch_two_sided": {"t": self.welch_t, "p": self.welch_p}}


@dataclass
class Confirmation:
    """The seed-checked trials, the winner (lowest mean) first, and its tests against the rest."""

    trials: list[Seeded]
    rivals: list[Rival]
    pooled: Pooled
    notes: list[str] = field(default_factory=list)  # e.g. fewer completed trials than asked

    @property
    def winner(self) -> Seeded:
        return self.trials[0]

    @property
    def noise(self) -> float:
        """The seed sd pooled over the trials (nan where none has two seeds)."""
        return self.pooled.sd

    @property
    def test(self) -> str:
        return ("one-sided t at the pooled seed sd" if self.pooled.holds else
                "Welch's one-sided t (the seed variances differ, so none is pooled)")

    @property
    def verdict(self) -> str:
        """`confirmed` (a significant lead over every rival), or `within noise of …`."""
        if not self.rivals:
            return "no rival to compare with"
        close = [r.trial_id for r in self.rivals if not r.significant]
        return f"within noise of {', '.join(close)}" if close else "confirmed"

    def lines(self) -> list[str]:
        """The result as plain text: the notes, a line a trial, the verdict, its test and what
        the seeds can tell."""
        out = [*self.notes]
        if not self.pooled.holds:
            out.append(f"the seed variances differ across the trials (Bartlett p "
                       f"{self.pooled.spread_p:.2g}): Welch's test decides, not the pooled one")
        for i, trial in enumerate(self.trials):
            seeds = ", ".join(f"{v:.4f}" for _, v in sorted(trial.losses.items()))
            test = ("the winner" if i == 0 else
                    next(f"lead {r.lead:+.4f} = {shown_sd(r.lead_sd)} seed sd, p {r.p:.2g}"
                         for r in self.rivals if r.trial_id == trial.trial_id))
            out.append(f"{trial.trial_id}: val_loss {trial.mean:.4f} ± {trial.sd:.4f} over "
                       f"{len(trial.losses)} seeds ({seeds}); {test}")
        out.append(f"winner {self.winner.trial_id}: {self.judged()}")
        freedom = f"{count(self.pooled.df, 'degree')} of freedom"
        if self.rivals:
            out.append(f"test: {self.test}, {self.noise:.4f} ({freedom}), Holm-corrected over "
                       f"{count(len(self.rivals), 'rival')}; confirmed where every rival's p < "
                       f"{ALPHA:g}")
            out.append(self.power())
        else:
            out.append(f"seed sd {self.noise:.4f} ({freedom})")
        return out

    def judged(self) -> str:
        """The verdict with each rival's lead in seed sd and p beside it: "within noise of
        d44a78c0 (0.4 sd, p 0.21); ahead of 0851cbb9 (3.1 sd, p 0.01)"."""
        if not self.rivals:
            return self.verdict
        close = [r for r in self.rivals if not r.significant]
        ahead = [r for r in self.rivals if r.significant]
        parts = [f"{what} " + ", ".join(f"{r.trial_id} ({shown_sd(r.lead_sd)} sd, p {r.p:.2g})"
                                        for r in these)
                 for what, these in (("within noise of", close),
                                     ("confirmed: ahead of" if not close else "ahead of", ahead))
                 if these]
        return "; ".join(parts)

    def power(self) -> str:
        """What the seeds can tell: by how much a confirmed lead clears the least these seeds
        confirm, or the seeds a trial needs to confirm the closest lead at the pooled sd."""
        closest = max(self.rivals, key=lambda r: r.p)
        if not closest.significant:
            n = seeds_needed(closest.lead, self.noise, len(self.trials))
            lead = f"a lead of {shown_sd(closest.lead_sd)} seed sd over {closest.trial_id}"
            if n is None:
                return (f"{lead} would take more than {MOST_SEEDS} seeds a trial to confirm: "
                        "call it a tie")
            return (f"to confirm {lead}: {n} seeds a trial (--seeds {n - 1}) for an "
                    f"{POWER:.0%} chance, if the lead and the pooled sd hold")
        least = closest.smallest_lead()
        return (f"by how much: the lead over {closest.trial_id}, {closest.lead:.4f}, is "
                f"{closest.lead / least:.1f}× the least these seeds confirm ({least:.4f})")

    def record(self) -> dict[str, Any]:
        """The check as JSON (the parent run's seed_check.json)."""
        spread = None if self.pooled.spread_p is None else {
            "test": "Bartlett", "p": self.pooled.spread_p}
        return {"verdict": f"{self.winner.trial_id} {self.verdict}",
                "test": f"{self.test}, Holm-corrected; alpha {ALPHA}",
                "pooled_seed_sd": self.noise, "df": self.pooled.df,
                "equal_variances": spread,
                "trials": [{"trial_id": t.trial_id, "run_id": t.run_id,
                            "losses": {str(s): v for s, v in sorted(t.losses.items())},
                            "mean": t.mean, "sd": t.sd} for t in self.trials],
                "rivals": [r.record() for r in self.rivals]}


def shown_sd(value: float) -> str:
    """A lead in seed sd as printed: 0.42, 5.9, 83."""
    return f"{value:.2g}" if abs(value) < 10 else f"{value:.0f}"


def pool(trials: list[Seeded]) -> Pooled:
    """The trials' seed variances pooled with their degrees of freedom, and Bartlett's test of
    their equality where every trial has at least 3 seeds."""
    df = sum(len(t.losses) - 1 for t in trials)
    squares = sum((len(t.losses) - 1) * t.sd ** 2 for t in trials if len(t.losses) > 1)
    spread = None
    if len(trials) > 1 and all(len(t.losses) >= 3 for t in trials):
        from scipy import stats

        if all(t.sd > 0 for t in trials):
            spread = float(stats.bartlett(*(list(t.losses.values()) for t in trials)).pvalue)
        else:  # a trial without spread: equal only where none has any
            spread = 1.0 if not any(t.sd > 0 for t in trials) else 0.0
    return Pooled(math.sqrt(squares / df) if df else math.nan, df, spread)


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t and its two-sided p-value for the means of `a` and `b`."""
    from scipy import stats

    if statistics.variance(a) == statistics.variance(b) == 0:  # no noise: any difference is real
        same = statistics.fmean(a) == statistics.fmean(b)
        return (0.0 if same else math.copysign(math.inf, statistics.fmean(a) -
                                              statistics.fmean(b))), float(same)
    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def one_sided(lead: float, se: float, df: float) -> tuple[float, float]:
    """t = lead / se and its one-sided p (of a lead this large or larger by chance)."""
    from scipy import stats

    if not df > 0 or math.isnan(se):
        return math.nan, 1.0
    if se == 0:  # no noise: any lead is real
        return (math.copysign(math.inf, lead) if lead else 0.0), (0.0 if lead > 0 else 1.0)
    return lead / se, float(stats.t.sf(lead / se, df))


def welch_df(a: Seeded, b: Seeded) -> tuple[float, float]:
    """Welch's standard error of the difference of the means and its Welch–Satterthwaite df."""
    va, vb = a.sd ** 2 / len(a.losses), b.sd ** 2 / len(b.losses)
    if va + vb == 0:
        return 0.0, math.inf
    return math.sqrt(va + vb), (va + vb) ** 2 / (va ** 2 / (len(a.losses) - 1)
                                                 + vb ** 2 / (len(b.losses) - 1))


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted, running = [1.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def compare(trials: list[Seeded], notes: list[str] | None = None) -> Confirmation:
    """Rank seed-checked trials by mean and test the winner against each other one."""
    ranked = sorted(trials, key=lambda t: t.mean)
    pooled = pool(ranked)
    winner = ranked[0]
    tests = []
    for rival in ranked[1:]:
        lead = rival.mean - winner.mean
        if pooled.holds:
            se = pooled.sd * math.sqrt(1 / len(winner.losses) + 1 / len(rival.losses))
            df: float = pooled.df
        else:
            se, df = welch_df(winner, rival)
        t, p = one_sided(lead, se, df)
        welch_t, welch_p = (welch(list(winner.losses.values()), list(rival.losses.values()))
                            if min(len(winner.losses), len(rival.losses)) > 1 else (math.nan,
                                                                                    math.nan))
        tests.append((rival, lead, t, df, se, p, welch_t, welch_p))
    adjusted = holm([p for *_, p, _, _ in tests])
    rivals = [Rival(rival.trial_id, lead, lead / pooled.sd if pooled.sd else math.inf * lead, t,
                    df, se, p_holm, welch_t, welch_p)
              for (rival, lead, t, df, se, _, welch_t, welch_p), p_holm in zip(tests, adjusted)]
    return Confirmation(ranked, rivals, pooled, notes or [])


def seeds_needed(lead: float, sd: float, trials: int) -> int | None:
    """The seeds a trial (the same for each of `trials`) that give the pooled one-sided test a
    POWER chance to confirm `lead` at seed sd `sd`; None beyond MOST_SEEDS."""
    from scipy import stats

    def power(n: int) -> float:
        df = trials * (n - 1)
        return float(stats.nct.sf(stats.t.isf(ALPHA, df), df, lead / (sd * math.sqrt(2 / n))))

    if not lead > 0 or math.isnan(sd):
        return None
    if sd == 0:
        return 2
    if power(MOST_SEEDS) < POWER:
        return None
    low, high = 1, MOST_SEEDS  # power(low) < POWER <= power(high); power grows with n
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if power(mid) >= POWER else (mid, high)
    return high
