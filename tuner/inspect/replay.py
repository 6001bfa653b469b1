"""Replay a trial: train its recorded config again (from scratch or from its mid-trial checkpoint)
and compare val_loss with the original at every logged point.

`prepare` checks everything (config, dataset hash, checkpoint hash) before anything is written;
`execute` records the replay as a new MLflow run nested under the original trial run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.config import TrainConfig
from tuner.errors import UserError
from tuner.search.winners.retrain import train_logged
from tuner.store import runs
from tuner.store.write import log_metrics

GPU_TOLERANCE = 1e-2  # relative; a CPU or deterministic replay must match exactly
RUNTIME_FIELDS = ("device", "deterministic", "peak_flops")  # a replay may change these alone


@dataclass
class Point:
    """val_loss of the original and the replay after the same number of tokens."""

    tokens: int
    original: float
    replayed: float = math.nan  # nan: the replay has no evaluation here

    @property
    def abs_diff(self) -> float:
        if self.original == self.replayed:  # also two infs: both diverged here
            return 0.0
        diff = abs(self.original - self.replayed)
        return math.inf if math.isnan(diff) else diff

    def within(self, tolerance: float) -> bool:
        """Equal, or apart by at most `tolerance` of the original (never where one diverged)."""
        diff = self.abs_diff
        return diff == 0.0 or (math.isfinite(diff) and diff <= tolerance * abs(self.original))


@dataclass
class Plan:
    """A checked replay, ready to run: nothing has been written yet."""

    run: Any
    config: TrainConfig
    original: list[tuple[int, float]]  # (tokens, val_loss) as logged by the trial
    tolerance: float
    commit: str  # the code version replaying it
    resume_from: Path | None = None
    resume_tokens: int = 0
    threads: int | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class Replay:
    """The outcome: every compared point and the run that recorded the replay."""

    run_id: str
    replay_run_id: str
    points: list[Point]
    tolerance: float
    resume_tokens: int

    @property
    def max_abs_diff(self) -> float:
        return max((p.abs_diff for p in self.points), default=math.inf)

    @property
    def ok(self) -> bool:
        return bool(self.points) and all(p.within(self.tolerance) for p in self.points)


def prepare(client: Any, run: Any, workdir: Path, *, device: str | None = None,
            deterministic: bool = False, from_checkpoint: bool = False, data: Path | None = None,
            tolerance: float | None = None) -> Plan:
    """Read the trial's config, seed, dataset and code version and check they can be replayed."""
    from model.train import device_label, resolve_device
    from tuner.search.record.provenance import git_commit
    from tuner.store.layout import DEVICE_TAG

    run_id, tags = run.info.run_id, run.data.tags
    config = runs.reproducible_config(client, run, workdir, "replayed")
    if str(config.seed) != tags.get("tuner.seed", str(config.seed)):
        raise UserError(f"run {run_id}: tuner.seed tag {tags['tuner.seed']} differs from the "
                        f"seed {config.seed} in its trial_config.json")
    if data is not None:
        config.data = str(data)
    _check_dataset(Path(config.data), tags.get("tuner.dataset_sha256"), run_id, data is None)
    # a run recorded before the tag existed names its device only if its config did
    trained_on = tags.get(DEVICE_TAG) or (None if config.device == "auto" else config.device)
    trained_exactly = config.deterministic
    if device is not None:
        config.device = device
    config.deterministic = config.deterministic or deterministic
    replay_on = device_label(resolve_device(config.device))
    if replay_on != trained_on:
        config.peak_flops = None  # the trial's GPU's peak: mfu on another is against its own
    original = runs.metric_points(client, run_id, "val_loss")
    if not original:
        raise UserError(f"run {run_id} logged no val_loss: there is nothing to compare with")
    if tolerance is None:  # exact on CPUs, and with deterministic kernels on the same GPU model
        exact = trained_on is not None and (
            _device_type(trained_on) == "cpu" == _device_type(replay_on)
            or (trained_exactly and trained_on == replay_on))
        tolerance = 0.0 if exact else GPU_TOLERANCE
    plan = Plan(run, config, original, tolerance, git_commit(),
                threads=int(tags["tuner.threads"]) if "tuner.threads" in tags else None)
    recorded = tags.get("tuner.git_commit", "unknown")
    if recorded != plan.commit:
        plan.warnings.append(f"the trial ran code version {recorded}, this is {plan.commit}: "
                             "differences may come from the code")
    if from_checkpoint:
        _resume_point(client, plan, workdir)
    return plan


def _device_type(device: str) -> str:
    """`cpu` or `cuda` from a device as tagged (`cuda (NVIDIA H100 …)`) or configured (`cuda:1`)."""
    return device.split(" ")[0].split(":")[0]


def _check_dataset(folder: Path, recorded: str | None, run_id: str, recorded_path: bool) -> None:
    from tuner.search.record.provenance import dataset_digests

    if not folder.is_dir():
        raise UserError(f"dataset folder {folder} of run {run_id} not found: pass --data DIR"
                        if recorded_path else f"--data {folder}: no such folder")
    if not (folder / "meta.json").is_file():
        named = f"dataset folder {folder} of run {run_id}" if recorded_path else f"--data {folder}"
        raise UserError(f"{named}: not a dataset folder (no meta.json); pass the folder "
                        "`tuner data prepare` made")
    if recorded is None:
        raise UserError(f"run {run_id} recorded no dataset hash (tuner.dataset_sha256)")
    actual = dataset_digests(folder)
    if recorded not in actual:
        raise UserError(f"dataset {folder} is not the one run {run_id} trained on: its sha256 is "
                        f"{actual[0][:12]}…, the run recorded {recorded[:12]}…")


def _resume_point(client: Any, plan: Plan, workdir: Path) -> None:
    """Use the trial's mid-trial checkpoint: verified, safe to load, of the same config."""
    from model.checkpoint import read_checkpoint
    from model.config import ConfigError

    path = runs.checkpoint_file(client, plan.run, "mid", workdir)
    try:
        state = read_checkpoint(path)
    except ConfigError as err:
        raise UserError(f"mid-trial checkpoint of run {plan.run.info.run_id}: "
                        f"{err.message}") from None
    mine, saved = plan.config.to_dict(), dict(state.get("config") or {})
    for key in (*RUNTIME_FIELDS, "data"):
        mine.pop(key, None)
        saved.pop(key, None)
    if mine != saved:
        raise UserError(f"the mid-trial checkpoint of run {plan.run.info.run_id} holds another "
                        "config than its trial_config.json")
    plan.resume_from = path
    plan.resume_tokens = int(state["iteration"]) * plan.config.tokens_per_step
    if plan.resume_tokens >= plan.original[-1][0]:
        raise UserError(f"the mid-trial checkpoint of run {plan.run.info.run_id} is at its last "
                        "evaluation: there is nothing left to replay")


def execute(client: Any, plan: Plan) -> Replay:
    """Train the plan's config again, log it as a replay run, and compare with the original."""
    from model.train import device_label, resolve_device
    from tuner.store.layout import ROLE_TAG, STUDY_TAG

    original_id, tags = plan.run.info.run_id, plan.run.data.tags
    end_tokens = plan.original[-1][0]
    name = f"replay-{plan.run.info.run_name}"
    replay_id = client.create_run(plan.run.info.experiment_id, run_name=name, tags={
        "mlflow.parentRunId": original_id, ROLE_TAG: "replay", "tuner.replay_of": original_id,
        STUDY_TAG: tags.get(STUDY_TAG, ""), "tuner.seed": str(plan.config.seed),
        "tuner.dataset_sha256": tags.get("tuner.dataset_sha256", ""),
        "tuner.git_commit": plan.commit,
        "tuner.device": device_label(resolve_device(plan.config.device)),
        "tuner.replay.from_checkpoint": str(plan.resume_from is not None).lower()}).info.run_id
    client.log_dict(replay_id, plan.config.to_dict(), "trial_config.json")
    # a trial stopped early is replayed as far as it went
    replayed = train_logged(client, replay_id, plan.config, threads=plan.threads,
                            end_tokens=end_tokens, resume_from=plan.resume_from)
    points = [Point(tokens, value, replayed.get(tokens, math.nan))
              for tokens, value in plan.original if tokens > plan.resume_tokens]
    points += [Point(tokens, math.nan, value) for tokens, value in sorted(replayed.items())
               if tokens not in dict(plan.original)]
    result = Replay(original_id, replay_id, sorted(points, key=lambda p: p.tokens), plan.tolerance,
                    plan.resume_tokens)
    log_metrics(client, replay_id, {"replay_max_abs_diff": result.max_abs_diff}, end_tokens)
    client.set_tag(replay_id, "tuner.replay.ok", str(result.ok).lower())
    client.set_terminated(replay_id, "FINISHED")
    return result

