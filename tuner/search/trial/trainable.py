"""The Tune function trainable: a trial is one call of the trainer, reporting at every evaluation.

Each report carries the evaluation's metrics with `tokens` (Tune's time attribute). Those that
the trainer checkpointed (`search.checkpoint_interval_s` apart, at the end, the first past half
the budget, and every one under PBT and HyperBand, which pause and clone trials) carry a Tune
checkpoint of its state too, so a retried, resumed or PBT-exploited trial continues from it.
A trial whose trainer raises reports the error with the worst `val_loss` and ends: deterministic
errors are recorded, not retried; Tune's retries are left to processes the OS killed, to a GPU
out of memory (maybe the other trials' on it). A disk that cannot be written is reported, and
the driver stops the study (`tuner.search.faults.storage_faults`). When the study stops, each trial
reports once more, with a checkpoint of the step it is at (`tuner.search.faults.stopping`).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

TIME_ATTR = "tokens"
HYPERBAND_TIME = "hyperband_units"  # HyperBand sizes its brackets for few time units: not tokens
OUT_OF_MEMORY_FILE = "out_of_memory_retries"  # in the trial's folder under --storage
SINCE_RESTORE = "tokens_since_restore"  # trained by this call of the trainable, from its checkpoint
TRIAL_START = "trial_start"  # when this call of the trainable began (epoch seconds)
TRIAL_S = "trial_s"  # seconds from then to this report
CHECKPOINT_S = "checkpoint_s"  # its training thread's seconds on checkpoints (Tune's copies too)
CHECKPOINT_BYTES = "checkpoint_bytes"  # what its checkpoints wrote to disk, Tune's copies too
COMPILE_S = "compile_s"  # its seconds compiling the model's graphs
FORKS = "forks"  # [[tokens of the run it stands for, val_loss], ...]: the WSD forks just done
FORK_TOKENS = "fork_tokens"  # what its WSD forks trained to this step, over and above `tokens`
STOP_POLL_S = 0.2  # how often a trial looks for the driver's stop flag
WORST = math.inf  # the metric a diverged or failed trial reports (mode is min)


def trial_metrics(record: Any, budget_tokens: int, time_unit: float | None,
                  prompt: str) -> dict[str, Any]:
    """What an evaluation reports to Tune: the record's numbers, the budget, divergence, sample
    (with the `prompt` it continues) and, for HyperBand, the tokens in `time_unit`s."""
    metrics: dict[str, Any] = {**record.as_metrics(), "budget_tokens": budget_tokens,
                               "diverged": float(not math.isfinite(record.val_loss))}
    if time_unit:
        metrics[HYPERBAND_TIME] = record.tokens / time_unit
    if record.sample is not None:
        metrics.update(sample=record.sample, sample_prompt=prompt)
    return metrics


def fork_metrics(config: Any, step: int, forks: list[Any]) -> dict[str, Any]:
    """A report's WSD forks: the results of `forks` (their tokens and loss) and the tokens all of
    the run's forks before `step` trained; nothing for a run without forks."""
    if not config.forks:
        return {}
    trained = sum(end - start for start, end in config.fork_points() if start < step)
    results = [[fork.tokens, fork.val_loss] for fork in forks]
    forks.clear()  # each is reported once
    return {FORKS: results, FORK_TOKENS: trained * config.tokens_per_step}


def checkpoint_interval(study: Any) -> float:
    """Seconds between a trial's checkpoints: 0 (each evaluation) where the scheduler pauses
    trials (HyperBand) or clones them (PBT) at any evaluation."""
    if study.search.scheduler in ("pbt", "hyperband"):
        return 0.0
    return study.search.checkpoint_interval_s


def compile_cache() -> Path:
    """torch's compile caches (inductor's FX graphs, AOTAutograd's, Triton's kernels), one folder
    for every trial and actor of the machine, and every study: a shape compiles once a machine."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tuner" / "torch-compile"


def trial_threads(study: Any) -> int:
    """Torch threads of a trial: its whole CPUs (replays need the same count to be exact)."""
    return max(1, int(study.resources.cpus_per_trial))


def run_trial(params: dict[str, Any], *, study: Any, data_dir: str, threads: int,
              time_unit: float | None, stopping_points: tuple[float, ...] | None,
              checkpoint_every_s: float, umask: int, stop_flag: Any, scratch: str,
              replay: Any = None, staged_dataset: str | None = None) -> None:
    """Train one trial of `study` with the sampled `params`, reporting to Tune at each eval (with
    its device and node); a text sample comes with the evaluations where the scheduler may end
    it, and the last. Its working files (checkpoints, in a folder of its own in its node's
    folder `scratch`, which the driver deletes) are made under the driver's `umask`, not the one
    of Ray's processes. Once `stop_flag` exists (a file, or a `RayFlag`: the study is stopping) it reports
    a checkpoint of the step it is at, with its last evaluation's metrics again, and waits for
    Tune to stop it. With `replay` (a `tuner.search.trial.curve_replay.CurveReplay`) its table
    answers the trial in place of the trainer. With `staged_dataset` (`tuner.dataset_stage`'s
    URI) it trains on that dataset, fetched into its node's cache, not on the driver's `data_dir`."""
    import torch
    from ray import tune

    from model.checkpoint import CHECKPOINT_NAME
    from model.compiled import compile_seconds
    from model.train import device_label, resolve_device, train
    from tuner.dataset_stage import fetch
    from tuner.search.faults.stopping import STOP_CHECKPOINT
    from tuner.search.faults.storage_faults import STORAGE_FAULT, storage_error
    from tuner.store.node_metrics import NodeMetrics
    from tuner.search.trial.scratch import on_this_node

    os.umask(umask)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache()))
    torch.set_num_threads(threads)
    stopped_by_the_study = False
    node_scratch = on_this_node(scratch)
    node_scratch.mkdir(mode=0o700, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="trial-", dir=node_scratch))
    ckpt_dir = work / "checkpoint"
    ckpt_dir.mkdir()
    progress = {"tokens": 0, "budget_tokens": 0, SINCE_RESTORE: 0, "val_loss": WORST,
                **({HYPERBAND_TIME: 0.0} if time_unit else {})}
    costs = {CHECKPOINT_S: 0.0, CHECKPOINT_BYTES: 0}  # Tune's copies of the checkpoints
    started, compiled_before = time.time(), compile_seconds()
    node_metrics = NodeMetrics(study, tune.get_context().get_trial_id(),
                               study.tracking.system_metrics_s if replay is None else 0).start()
    try:
        resume_from, restored_steps = restore(tune.get_checkpoint(), ckpt_dir)
        if staged_dataset:
            data_dir = str(fetch(staged_dataset, say=lambda line: print(line, file=sys.stderr)))
        config = study.trial_config(params, Path(data_dir))
        start = restored_steps * config.tokens_per_step
        progress["budget_tokens"] = config.steps * config.tokens_per_step
        where = {"device": device_label(resolve_device(config.device)), "node": node_label()}
        forks: list[Any] = []  # WSD forks since the last report
        forked = 0  # the tokens this call's forks trained

        def on_fork(fork: Any) -> None:
            nonlocal forked
            forks.append(fork)
            forked += fork.trained_tokens

        def on_eval(record: Any) -> None:
            metrics = {**trial_metrics(record, progress["budget_tokens"], time_unit,
                                       config.sample_prompt),
                       **fork_metrics(config, record.step, forks),
                       SINCE_RESTORE: record.tokens - start + forked, **where,
                       TRIAL_START: started, TRIAL_S: time.time() - started,
                       CHECKPOINT_BYTES: costs[CHECKPOINT_BYTES],
                       CHECKPOINT_S: record.checkpoint_s + costs[CHECKPOINT_S],
                       COMPILE_S: compile_seconds() - compiled_before}
            progress.update({key: metrics[key] for key in progress})
            if not record.checkpointed:
                tune.report(metrics)
                return
            begin = time.perf_counter()
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))
            costs[CHECKPOINT_S] += time.perf_counter() - begin
            costs[CHECKPOINT_BYTES] += 2 * (ckpt_dir / CHECKPOINT_NAME).stat().st_size  # and copy

        def on_stop_checkpoint(step: int, last: Any) -> None:
            if last is not None:  # else no metrics for Tune to take a checkpoint with
                unsampled = dataclasses.replace(last, sample=None)  # logged with it already
                metrics = {**trial_metrics(unsampled, progress["budget_tokens"], time_unit,
                                           config.sample_prompt),
                           **fork_metrics(config, step, forks),
                           SINCE_RESTORE: step * config.tokens_per_step - start + forked,
                           **where, STOP_CHECKPOINT: step}
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))
            # Training on would write checkpoints that no one registers, and returning before
            # the driver's loop has ended would end the trial as completed: once it has (the
            # flag is gone), end this thread as Tune ends a stopped trial's, so that Tune's
            # stop finds the process free at once.
            stop_flag_seen.wait_gone()
            sys.exit(0)

        stop_flag_seen = StopFlag(stop_flag)
        trainer = train if replay is None else replay.trainer(params)
        result = trainer(config, on_eval=on_eval, checkpoint_dir=ckpt_dir,
                         resume_from=resume_from, sample_at=stopping_points,
                         checkpoint_now=stop_flag_seen, on_checkpoint=on_stop_checkpoint,
                         checkpoint_every_s=checkpoint_every_s,
                         checkpoint_at=(progress["budget_tokens"] / 2,),  # a replay's start
                         on_fork=on_fork)
        if progress["tokens"] == 0 and result.records:
            # Restored at its end (a PBT clone of a trial at its last step, a final checkpoint
            # put back after a kill): it trained nothing, so say again where it ended, or Tune
            # keeps the result it restored, which may be from before.
            on_eval(dataclasses.replace(result.records[-1], checkpointed=True))
    except torch.OutOfMemoryError as err:
        # Maybe the other trials' memory on the GPU: Tune retries it from its checkpoint, as a
        # process the OS killed; the last time it fails as a config that does not fit, so that
        # the searcher learns of it (a trial Tune fails is left out of its model).
        if _retry_out_of_memory(study.search.max_failures):
            traceback.clear_frames(err.__traceback__)  # they hold the model: free it first
            raise
        _report_error(tune, progress, err)
    except Exception as err:  # noqa: BLE001 - any trainer error fails this trial, not the study
        if storage_error(err) is None:
            _report_error(tune, progress, err)
        else:  # the disk's fault, not the config's: said to the driver, which stops the study
            traceback.clear_frames(err.__traceback__)
            tune.report({**progress, STORAGE_FAULT: f"{type(err).__name__}: {err}"})
            stopped_by_the_study = True
    except BaseException as err:  # Tune ending the trial (a scheduler's stop) within a report
        traceback.clear_frames(err.__traceback__)
        raise
    finally:
        node_metrics.stop()
        shutil.rmtree(work, ignore_errors=True)
        _free_gpu_memory(torch)
    if stopped_by_the_study:  # returning would end the trial as completed: Tune's stop ends it
        threading.Event().wait()


def trial_folder(trial_id: str) -> str:
    """The name of a trial's folder in the study's, where Tune keeps its checkpoints."""
    return f"trial_{trial_id}"


def node_label() -> str:
    """The Ray node this process runs on: its IP address and node id."""
    import ray

    return f"{ray.util.get_node_ip_address()} {ray.get_runtime_context().get_node_id()}"


class StopFlag:
    """True once, the first time the driver's stop flag (a Path, or a `RayFlag`) is seen (it is
    looked for every STOP_POLL_S)."""

    def __init__(self, flag: Any) -> None:
        self.flag, self._next_look, self._seen = flag, 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if self._seen or now < self._next_look:
            return False
        self._next_look = now + STOP_POLL_S
        self._seen = self.flag.exists()
        return self._seen

    def wait_gone(self) -> None:
        """Return once the flag is gone (the driver has handed the stop to Tune)."""
        while self.flag.exists():
            time.sleep(STOP_POLL_S / 2)


def _report_error(tune: Any, progress: dict[str, Any], err: Exception) -> None:
    tune.report({**progress, "val_loss": WORST, "error": f"{type(err).__name__}: {err}",
                 "traceback": traceback.format_exc(limit=20)})


def _retry_out_of_memory(max_failures: int) -> bool:
    """Whether Tune should run this trial again after a GPU out-of-memory error: counted in the
    trial's folder where Tune keeps it (an object store's too), which its restarts share on any
    node, and after a resume."""
    from pyarrow.fs import FileType
    from ray import tune

    storage = tune.get_context().get_storage()
    fs, marker = storage.storage_filesystem, f"{storage.trial_fs_path}/{OUT_OF_MEMORY_FILE}"
    found = fs.get_file_info(marker).type == FileType.File
    count = int(fs.open_input_stream(marker).read()) if found else 0
    if count >= max_failures:
        return False
    fs.create_dir(storage.trial_fs_path)  # Tune makes it with its first checkpoint
    with fs.open_output_stream(marker) as out:
        out.write(str(count + 1).encode())
    return True


def _free_gpu_memory(torch: Any) -> None:
    """Hand the trial's cached GPU memory back: a reused actor keeps its process, and torch's
    cache would otherwise hold the largest trial's peak against the trials sharing the GPU."""
    gc.collect()  # the model and optimizer of the trial that ended (an exception holds frames)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def restore(checkpoint: Any, ckpt_dir: Path) -> tuple[Path | None, int]:
    """Copy Tune's checkpoint (a retry, a resume or a PBT clone) into the trial's scratch folder;
    where it is and the steps it trained (None, 0: none). One that does not load (empty, cut
    short) is named where Tune keeps it, not as the scratch copy."""
    from model.checkpoint import CHECKPOINT_NAME, read_checkpoint
    from model.config import ConfigError

    if checkpoint is None:
        return None, 0
    checkpoint.to_directory(str(ckpt_dir))
    try:
        steps = int(read_checkpoint(ckpt_dir, mmap=True)["iteration"])  # not its tensors
    except ConfigError as err:
        raise ConfigError(f"{checkpoint.path.rstrip('/')}/{CHECKPOINT_NAME}", err.message) from None
    return ckpt_dir, steps


class TrainedTokens:
    """The tokens each trial trained, from its reports; a restore (a retry, a resume, a PBT
    exploit) starts the trainable's count again."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}  # trial id -> SINCE_RESTORE at its last report

    def add(self, trial_id: str, result: dict[str, Any]) -> int:
        """The tokens the trial trained since its previous report."""
        count = int(result.get(SINCE_RESTORE, 0))
        same_call = result.get("iterations_since_restore", 1) > 1  # Tune's count, reset on restore
        before = self._counts.get(trial_id, 0) if same_call else 0
        self._counts[trial_id] = count
        return max(count - before, 0)
