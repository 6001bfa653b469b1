"""The Python API (`import tuner`): the CLI's studies from a notebook or a script, through the same
code: `tuner search` runs the study's lifecycle as `search` does, and `tuner replay`, `best`,
`report`, `generate` and `probe` call the functions here and print what they return.

Bad input raises a UserError (SpaceError for a study, TrackingError for a store) with the CLI's
message, before anything starts. A study that ran returns a SearchResult however it ended. Ray,
torch and MLflow are imported only by the functions that need them: `trials`, `best`,
`top_trials`, `confirmation` and `report` import neither Ray nor torch.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.lr_probe import END_LR, NOISE_STEPS, START_LR, STEPS  # no torch: it comes with a sweep
from model.metrics import perplexity
from tuner.errors import UserError
from tuner.store.uri import DEFAULT_URI

if TYPE_CHECKING:
    import pandas as pd

    from model.config import TrainConfig
    from tuner.inspect.register import Registered
    from tuner.inspect.replay import Plan, Replay
    from tuner.probe.run import ProbeResult
    from tuner.search.ended import Ended
    from tuner.search.winners.verdict import Confirmation
    from tuner.space import Study

COLUMNS = ("trial_id", "run_id", "status", "val_loss", "perplexity", "reached_at", "tokens",
           "noise_scale")


@dataclass(frozen=True)
class SeedCheck:
    """A trial's seed check (`tuner best --confirm`): its final val_loss at each seed (its own
    run's and its confirmations'), their mean and sd, and its verdict: the winner's (the lowest
    mean) "confirmed" or "within noise of …"; a rival's, how it fares against the winner (its
    lead in pooled seed sd, its one-sided Holm-corrected p: tuner.search.winners.verdict)."""

    losses: dict[int, float]
    mean: float
    sd: float  # nan with one seed
    verdict: str


@dataclass(frozen=True)
class Trial:
    """One trial run of a study as MLflow holds it: its searched values (by the study file's
    names), its best val_loss, the tokens it trained and those at which it reached its best;
    `config` the trainer config it ran (None where not read, and for a PBT trial: its values
    changed as it ran); `seed_check` its seed check where the study has one; `usable` whether it
    can be the best (a finite val_loss, neither diverged nor failed); `noise_scale` its gradient
    noise scale B_simple in sequences at its last measurement (None: never measured)."""

    study: str
    trial_id: str
    run_id: str
    status: str
    params: dict[str, Any]
    val_loss: float
    tokens: int
    reached_at: int
    config: TrainConfig | None = field(default=None, repr=False)  # long: print it on its own
    tracking_uri: str = field(default="", repr=False)  # may hold a password
    seed_check: SeedCheck | None = None
    usable: bool = True
    noise_scale: float | None = None

    @property
    def perplexity(self) -> float:
        return perplexity(self.val_loss)


@dataclass(frozen=True, eq=False)  # a DataFrame has no truth value to compare by
class SearchResult:
    """How a run of a study ended. `status`: "finished" (ran to its end), "interrupted" (stopped:
    resumable) or "failed" (the tracking store or the disk failed mid-study: resumable once back).
    `best` is None when no trial reached a finite val_loss, or when the study stopped with no
    summary (a second stop, a failure); `trials` is `tuner.trials`'s table of every trial."""

    name: str
    status: str
    best: Trial | None
    trials: pd.DataFrame = field(repr=False)
    parent_run_id: str | None
    message: str  # why it stopped ("" when it finished)
    resume_command: str  # the `tuner search --resume` line that continues it ("" when finished)
    exit_code: int  # what `tuner search` exits with: 0, 1 or 130
    tracking_uri: str = field(default="", repr=False)  # may hold a password


def load_study(source: Study | str | Path | Mapping[str, Any], name: str | None = None) -> Study:
    """A validated study from a study file, or a mapping of its sections (as YAML gives them),
    checked as a file is; SpaceError names every problem. A study without a name takes `name`."""
    from tuner.space import Study, load_study as load

    return source if isinstance(source, Study) else load(source, name)


def search(study: Study | str | Path | Mapping[str, Any] | None = None, *, name: str | None = None,
           tracking_uri: str | None = None, storage: str | Path = "ray_results",
           resume: bool = False, warm_start: str | None = None, address: str | None = None,
           quiet: bool = False, num_samples: int | None = None,
           max_concurrent: int | None = None, seed: int | None = None,
           curve_table: str | Path | None = None) -> SearchResult:
    """Run a study (a file, a mapping or a loaded study; None with `resume` and `name`) to its
    end, as `tuner search` does, showing its progress unless `quiet`; how it ended. A benchmark's
    `curve_table` answers the trials from that table of curves instead (docs/curves.md). Ctrl-C (a
    KeyboardInterrupt) stops it with grace and returns it "interrupted", resumable with
    `resume=True`; one before it is saved raises KeyboardInterrupt, with nothing to resume.
    `storage` is a folder or an object store's URI (s3://BUCKET/PREFIX), as `--storage` takes."""
    from model.shell import forget_stops
    from tuner.search import environment, lifecycle
    from tuner.store.redact import mask_log_records, remember

    given = None if study is None or isinstance(study, (str, Path)) else load_study(study, name)
    with environment.kept():
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the result
        remember(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        mask_log_records()
        try:
            ended = lifecycle.run(lifecycle.Request(
                space=None if study is None or given is not None else Path(study), name=name,
                num_samples=num_samples, max_concurrent=max_concurrent, seed=seed,
                tracking_uri=tracking_uri, storage=storage, address=address,
                resume=resume, warm_start=warm_start, study=given, quiet=quiet,
                curve_table=None if curve_table is None else Path(curve_table)))
        finally:  # a stop ends this study only, not the next one in this process (a notebook's)
            forget_stops()
        return _result(ended)


def _result(ended: Ended) -> SearchResult:
    """The result of a study's run: its trials and best read from MLflow where it summarised."""
    from tuner.store.connect import connect

    study, summary = ended.study, ended.summary
    trials, best = _frame([]), None
    if summary is not None:
        client = connect(study.tracking.uri)
        trials = _frame(_trials(client, study.name))
        if summary.best_run_id:
            best = _trial(client, study.name, client.get_run(summary.best_run_id), config=True,
                          checks=_seed_checks(client, study.name))
    return SearchResult(study.name, ended.status, best, trials,
                        summary.parent_run_id if summary else None, ended.message,
                        ended.resume_command, ended.exit_code, study.tracking.uri)


def trials(name: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """Every trial of study `name`, best first, one row each (index: rank from 1): trial_id,
    run_id, status, val_loss (its best), perplexity, reached_at (the tokens at which it reached
    that best), tokens (trained), noise_scale (B_simple at its end, in sequences; NaN where never
    measured), then each searched value, as study.html's table."""
    client = _client(tracking_uri)
    return _frame(_trials(client, name))


def best(name: str, tracking_uri: str | None = None) -> Trial:
    """The best trial of study `name`, with its config and its seed check where it has one;
    UserError when none can be the best."""
    from tuner.store import runs

    client = _client(tracking_uri)
    return _trial(client, name, runs.best_trial(client, name), config=True,
                  checks=_seed_checks(client, name))


def top_trials(name: str, k: int = 5, tracking_uri: str | None = None) -> list[Trial]:
    """The `k` best trials of study `name`, best first (those that cannot be the best last), each
    with its seed check where it has one, as `tuner best` lists them; no config read."""
    if k < 1:
        raise UserError(f"k={k}: list 1 trial or more (as tuner best --top)")
    client = _client(tracking_uri)
    return _trials(client, name, k, _seed_checks(client, name))


def confirm(name: str, *, top: int = 3, seeds: int = 3, tracking_uri: str | None = None,
            progress: Callable[[str], None] | None = print) -> Confirmation:
    """Seed-check study `name`'s `top` best completed trials, as `tuner best --confirm TOP
    --seeds SEEDS`: train each with `seeds` further seeds (those not done already), record the
    verdict; the comparison (`.verdict`, `.trials`, `.rivals`, `.lines()`, `.record()`: the JSON
    the parent run holds as seed_check.json). `progress` sees a line a run."""
    from tuner.search.winners import seed_check

    if top < 1:
        raise UserError(f"--confirm {top}: confirm 1 trial or more")
    if not 1 <= seeds <= 100:
        raise UserError(f"--seeds {seeds}: from 1 to 100 further seeds per trial")
    client = _client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="tuner-confirm-") as tmp:
        return seed_check.confirm(client, name, top, seeds, Path(tmp),
                                  progress or (lambda line: None))


def confirmation(name: str, tracking_uri: str | None = None) -> Confirmation | None:
    """The seed check study `name` holds, compared (None when it has none); trains nothing."""
    return _recorded(_client(tracking_uri), name)


def register(name: str, model: str, *, tracking_uri: str | None = None,
             data: str | Path | None = None) -> Registered:
    """Register study `name`'s best trial as a new version of the MLflow registered model
    `model` (made when missing), as `tuner best --register MODEL`: its final checkpoint,
    tokenizer (from `data`, else the dataset it trained on) and config, loadable with
    `mlflow.pyfunc.load_model(result.uri)`; tagged with the trial, its val_loss, its seed check
    and the command that reproduces it."""
    from tuner.inspect.register import register_best

    for argument, value in (("name", name), ("model", model)):
        if not isinstance(value, str):
            raise UserError(f"register: {argument} {value!r} is not a string: give the "
                            f"{'study' if argument == 'name' else 'registered model'}'s name")
    if data is not None and not isinstance(data, (str, Path)):
        raise UserError(f"register: data {data!r} is not a path: give the dataset folder with "
                        "the tokenizer, or None")
    client = _client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="tuner-register-") as tmp:
        return register_best(client, name, model, Path(tmp), data=None if data is None else
                             Path(data), seed_checks=_in_words(_seed_checks(client, name)),
                             named="model")


def _in_words(checks: Mapping[str, SeedCheck]) -> dict[str, str]:
    """Each seed-checked trial's check in words, by run id."""
    return {run_id: f"{check.verdict}; final val_loss {check.mean:.4f} ± {check.sd:.4f} over "
                    f"{len(check.losses)} seeds" for run_id, check in checks.items()}


def probe(space: str | Path, *, start: float = START_LR, end: float = END_LR,
          steps: int = STEPS, noise_steps: int = NOISE_STEPS, write: bool = False,
          out: str | Path | None = None, tracking_uri: str | None = None,
          warn: Callable[[str], None] | None = None) -> ProbeResult:
    """The α range test of the study file `space` and its batch advice, as `tuner probe`:
    recorded as an MLflow run, its figure in `out` (default: reports/probe/NAME); with `write`,
    α_max's suggested range and B's suggested choices set in the file. `.lo`, `.hi`: the range
    (None, and `.found.problem`, when the curve gives none); `.batch`: the batch advice (None
    without a range, or with `noise_steps` 0), `.batch.suggested` its B's. `warn` (default: a
    Python warning) hears, before it trains, that the probe trains more than the study would."""
    from tuner.probe import run

    return run.probe(Path(space), start=start, end=end, steps=steps, noise_steps=noise_steps,
                     write=write, out=None if out is None else Path(out),
                     tracking_uri=tracking_uri, warn=warn)


def replay(trial: Trial | str | None = None, *, study: str | None = None,
           tracking_uri: str | None = None, from_checkpoint: bool = False,
           device: str | None = None, deterministic: bool = False,
           tolerance: float | None = None, data: str | Path | None = None,
           announce: Callable[[Plan], None] | None = None) -> Replay:
    """Train a trial (a Trial, or its run id, trial id or run name; or the best of `study`) again
    and compare val_loss at every logged point; the comparison (`.ok`, `.points`). `announce`
    sees the checked plan before it trains (default: its warnings, as Python warnings)."""
    from tuner.inspect import replay as replay_mod
    from tuner.store import runs

    if (trial is None) == (study is None):
        raise UserError("name a trial (its run id, trial id or run name), or --study NAME to "
                        "replay its best trial (not both)")
    client = _client(_uri_of(trial, tracking_uri))
    run = runs.trial_run(client, _id_of(trial)) if trial is not None else runs.best_trial(
        client, study)
    with tempfile.TemporaryDirectory(prefix="tuner-replay-") as tmp:
        plan = replay_mod.prepare(client, run, Path(tmp), device=device,
                                  data=None if data is None else Path(data),
                                  deterministic=deterministic, from_checkpoint=from_checkpoint,
                                  tolerance=tolerance)
        (announce or _warn)(plan)
        return replay_mod.execute(client, plan)


def _warn(plan: Plan) -> None:
    for text in plan.warnings:
        warnings.warn(text, stacklevel=3)


def report(name: str, out: str | Path | None = None, tracking_uri: str | None = None
           ) -> list[Path]:
    """Write study `name`'s report (figures, summary.md, study.html) to `out` (default:
    reports/NAME), log it under report/ of its parent run; the files written."""
    from tuner.inspect.report import write_report

    client = _client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="tuner-report-") as tmp:
        return write_report(client, name, Path(out) if out else Path("reports") / name, Path(tmp))


def generate(trial: Trial | str | None, prompt: str, *, checkpoint: str | Path | None = None,
             max_new_tokens: int = 64, temperature: float = 0.8, top_p: float = 0.95,
             seed: int = 0, data: str | Path | None = None, device: str = "auto",
             tracking_uri: str | None = None) -> str:
    """The continuation of `prompt` (without it) by a trial's final checkpoint (a Trial, or its
    run id, trial id or run name), or by the checkpoint file `checkpoint` (trial None)."""
    from model.config import ConfigError
    from tuner.inspect.generate import generate_text

    if (trial is None) == (checkpoint is None):
        raise UserError("give one of --run TRIAL or --checkpoint PATH")
    if math.isinf(temperature):
        raise UserError("--temperature: must be a finite number (0 picks the likeliest token)")
    kwargs = dict(data=None if data is None else Path(data), max_new_tokens=max_new_tokens,
                  temperature=temperature, top_p=top_p, seed=seed, device=device)
    if trial is None:
        return generate_text(Path(checkpoint), prompt, **kwargs)
    from tuner.store import runs

    client = _client(_uri_of(trial, tracking_uri))
    run_id = _id_of(trial)
    with tempfile.TemporaryDirectory(prefix="tuner-generate-") as tmp:
        path = runs.checkpoint_file(client, runs.trial_run(client, run_id), "final", Path(tmp))
        try:
            return generate_text(path, prompt, **kwargs)
        except (UserError, ConfigError) as err:  # name the run's artifact, not its download
            raise UserError(str(err).replace(str(path),
                                             f"the checkpoint artifact of run {run_id}")) from None


def tracking_uri_or_default(tracking_uri: str | None) -> str:
    """The store to read: `tracking_uri`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    if tracking_uri is not None:
        return tracking_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _client(tracking_uri: str | None) -> Any:
    from tuner.store.connect import connect_existing

    return connect_existing(tracking_uri_or_default(tracking_uri))


def _uri_of(trial: Trial | str | None, tracking_uri: str | None) -> str | None:
    """The store to find `trial` in: the one given, else the Trial's own."""
    if tracking_uri is None and isinstance(trial, Trial) and trial.tracking_uri:
        return trial.tracking_uri
    return tracking_uri


def _id_of(trial: Trial | str) -> str:
    return trial.run_id if isinstance(trial, Trial) else trial


def _trials(client: Any, name: str, k: int | None = None,
            checks: Mapping[str, SeedCheck] | None = None) -> list[Trial]:
    """The `k` best trial runs of study `name` (every one: None), best first."""
    from tuner.store import runs

    ranked = runs.ranked(runs.trial_runs(client, runs.study_parent(client, name)))
    return [_trial(client, name, run, checks=checks) for run in ranked[:k]]


def _recorded(client: Any, name: str) -> Confirmation | None:
    from tuner.search.winners import seed_check
    from tuner.store import runs

    return seed_check.recorded(client, runs.study_parent(client, name))


def _seed_checks(client: Any, name: str) -> dict[str, SeedCheck]:
    """The seed check of each trial study `name` seed-checked, by run id."""
    from tuner.search.winners.verdict import shown_sd

    checked = _recorded(client, name)
    if checked is None:
        return {}
    winner, tests = checked.winner.trial_id, {r.trial_id: r for r in checked.rivals}
    found = {}
    for seeded in checked.trials:
        test = tests.get(seeded.trial_id)
        verdict = checked.verdict if test is None else (
            f"{'behind' if test.significant else 'within noise of'} the winner {winner} "
            f"(lead {shown_sd(test.lead_sd)} seed sd, p {test.p:.2g})")
        found[seeded.run_id] = SeedCheck(dict(seeded.losses), seeded.mean, seeded.sd, verdict)
    return found


def _trial(client: Any, name: str, run: Any, config: bool = False,
           checks: Mapping[str, SeedCheck] | None = None) -> Trial:
    """A trial run as a Trial, with its seed check from `checks`; with its trainer config (not a
    PBT trial's) when `config`."""
    from tuner.store import runs
    from tuner.store.rows import trial_row

    row = trial_row(client, run)
    trained = None
    if config and not row.pbt:
        with tempfile.TemporaryDirectory(prefix="tuner-best-") as tmp:
            trained = runs.trial_config(client, run, Path(tmp))
    return Trial(name, row.trial_id, row.run_id, row.status,
                 {n: _value(v) for n, v in row.params.items()}, row.val_loss, row.tokens,
                 row.reached_at, trained, client.tracking_uri,
                 (checks or {}).get(row.run_id), row.usable, row.noise_scale)


def _value(text: str) -> Any:
    """A logged parameter's value as a number where it is one ("8" → 8, "0.02" → 0.02)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _frame(found: list[Trial]) -> pd.DataFrame:
    """The trials as a table, best first: COLUMNS (noise_scale NaN where never measured), then
    each searched value."""
    import pandas as pd

    names = list(dict.fromkeys(n for t in found for n in t.params))
    frame = pd.DataFrame([[t.trial_id, t.run_id, t.status, t.val_loss, t.perplexity, t.reached_at,
                           t.tokens, math.nan if t.noise_scale is None else t.noise_scale,
                           *(t.params.get(n) for n in names)] for t in found],
                         columns=[*COLUMNS, *names])
    frame.index = pd.RangeIndex(1, len(found) + 1, name="rank")
    return frame
