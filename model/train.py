"""The training loop: one call of `train(config)` is one trial. Also
`python -m model.train --config F`."""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from model.checkpoint import checkpoint_config, checkpoint_path, checkpoint_state, read_checkpoint
from model.checkpoint_writer import CheckpointWriter
from model.compiled import compiled, compiles
from model.config import ConfigError, TrainConfig, load_train_config
from model.data import get_batch, validation_windows
from model.layers import TransformerLM
from model.loss import cross_entropy
from model.metrics import perplexity
from model.noise_scale import GradientNorms, NoiseScale, gradient_norms
from model.optim import build_optimizer, clip_grad_norm
from model.schedules import LRSchedule, set_lr
from model.shell import as_started, stops_as_ctrl_c
from model.token_files import Dataset, dataset_identity

RESUME_KEYS = ("optimizer", "schedule", "rng", "records")  # what train() saves besides the model
DIVERGENCE_FACTOR = 2.0  # a train loss above 2·ln|V| (twice a uniform guess) counts as diverged
# Dense bf16 FLOP/s by a word of the device's name, the first match winning (variants first).
PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12),
              ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12),
              ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12),
              ("A10", 125e12), ("4090", 165e12))


@dataclass
class EvalRecord:
    """The metrics of one evaluation, handed to `on_eval`."""

    step: int
    tokens: int
    train_loss: float
    val_loss: float
    val_ppl: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    mfu: float
    elapsed_s: float
    checkpoint_s: float = 0.0  # this call's training-thread seconds on checkpoints so far
    noise_scale: float | None = None  # B_simple in sequences, where this evaluation measured it
    noise_scale_tokens: float | None = None  # B_simple in tokens: its sequences × context
    sample: str | None = None
    checkpointed: bool = field(default=False, compare=False)  # its step's checkpoint is on disk

    def as_metrics(self) -> dict[str, float]:
        """The numeric fields, for trackers (the noise scale only where measured)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("sample", "checkpointed") and v is not None}


@dataclass
class ForkRecord:
    """A WSD fork's result: the loss at the end of the run of `steps` steps that it stands for,
    trained from the main run's state at `start`, that run's decay start."""

    start: int
    steps: int
    tokens: int  # the run it stands for: steps·B·context
    trained_tokens: int  # what the fork itself trained: (steps − start)·B·context
    val_loss: float


@dataclass
class LossTally:
    """The train losses since the last evaluation; a loss above `limit` or not finite diverged."""

    limit: float
    total: float = 0.0
    count: int = 0

    def add(self, loss: Callable[[], float]) -> bool:
        """Count the loss `loss()` reads; whether it diverged."""
        value = loss()
        self.total, self.count = self.total + value, self.count + 1
        return not math.isfinite(value) or value > self.limit

    def mean(self) -> float:
        return self.total / self.count


def read_later(value: torch.Tensor) -> Callable[[], float]:
    """A reader of 0-dim `value`. On a GPU the value is copied to the host now, without waiting,
    and the reader waits for that copy alone, not for the work queued after it."""
    if not value.is_cuda:
        return lambda: float(value)
    host = value.to("cpu", non_blocking=True)  # into pinned memory
    copied = torch.cuda.Event()
    copied.record()

    def read() -> float:
        copied.synchronize()
        return float(host)

    return read


@dataclass
class TrainResult:
    """How a run ended and what it measured."""

    status: str  # completed | stopped | diverged
    records: list[EvalRecord] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    epochs: int = 0  # N_epoch of the full run
    num_params: int = 0
    checkpoint: Path | None = None
    forks: list[ForkRecord] = field(default_factory=list)

    @property
    def best_val_loss(self) -> float:
        return min((r.val_loss for r in self.records), default=math.inf)

    @property
    def final(self) -> EvalRecord | None:
        return self.records[-1] if self.records else None


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; otherwise cpu, cuda or cuda:N, which must be here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError("device", f"unknown device {name!r}") from err
    if device.type not in ("cpu", "cuda"):  # torch names more (mps, meta, xpu) than this trains on
        raise ConfigError("device", f"{name!r} is not one of auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} requested but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError("device", f"{name!r} requested but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def device_label(device: torch.device) -> str:
    """`cpu`, or the device type with the GPU's model (`cuda (NVIDIA H100 80GB HBM3)`)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def flops_per_token(model: TransformerLM) -> float:
    """Training FLOPs per token: 6·N (embedding lookup excluded) + 12·layers·d_model·context."""
    cfg = model.config
    n = model.num_params() - model.token_embeddings.weight.numel()
    return 6 * n + 12 * cfg.num_layers * cfg.d_model * cfg.context_length


def peak_flops(config: TrainConfig, device: torch.device) -> float | None:
    """The device's peak FLOP/s for MFU: the config's, else a known GPU's bf16 one for a run in
    bf16 (`fast`), else unknown (an fp32 run's peak is a fraction of it)."""
    if config.peak_flops:
        return config.peak_flops
    if device.type != "cuda" or not config.fast:
        return None
    return peak_flops_of(torch.cuda.get_device_name(device))


def peak_flops_of(gpu_name: str) -> float | None:
    """The dense bf16 FLOP/s of a GPU by its name (`NVIDIA H100 80GB HBM3`), None if unknown."""
    return next((flops for words, flops in PEAK_FLOPS
                 if re.search(rf"\b{re.escape(words)}\b", gpu_name)), None)


def _load_tokenizer(dataset: Dataset):
    if not (dataset.path / "vocab.json").exists():
        return None
    from model.tokenizer import Tokenizer

    try:
        return Tokenizer.from_dir(dataset.path)
    except (OSError, ValueError) as err:  # a damaged vocab.json or merges.txt
        raise ConfigError(str(dataset.path), f"its tokenizer cannot be read ({err})") from None


def _check_prompt(tokenizer: Any, prompt: str) -> None:
    """Refuse a sample prompt generation could not start from, before any step trains."""
    from model.generate import prompt_ids

    try:
        prompt_ids(tokenizer, prompt)
    except ConfigError as err:
        raise ConfigError("sample_prompt", err.message) from None


def _rng_state(batch_gen: torch.Generator, sample_gen: torch.Generator,
               device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "batches": batch_gen.get_state(),
             "samples": sample_gen.get_state()}
    if device.type == "cuda":  # the training GPU's alone: a resume may see other GPUs, or fewer
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, batch_gen: torch.Generator, sample_gen: torch.Generator,
                   device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    batch_gen.set_state(state["batches"])
    sample_gen.set_state(state["samples"])
    if device.type != "cuda":
        return
    saved = state.get("cuda_device")
    if saved is None and "cuda" in state:  # written before: one state per GPU it could see
        index = device.index if device.index is not None else torch.cuda.current_device()
        saved = state["cuda"][index] if index < len(state["cuda"]) else None
    if saved is not None:
        torch.cuda.set_rng_state(saved, device)


def _optimizer_state_misfit(optimizer: torch.optim.Optimizer) -> str | None:
    """What in a loaded optimizer state does not match its parameter's shape (torch loads it
    unchecked, and the first step would fail on it); None when all does."""
    names = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                return (f"the optimizer's {key} of parameter {names.get(id(param), '?')} has shape "
                        f"{tuple(value.shape)}, not {tuple(param.shape)}")
    return None


def _place_steps(optimizer: torch.optim.Optimizer) -> None:
    """Put each `step` where the optimizer wants it: on its parameter's device when fused, else
    on the CPU (a foreach AdamW reads a GPU one with a sync per parameter per step). torch places
    them as the checkpoint's run was fused or not, which a resume on another device may change."""
    for group in optimizer.param_groups:
        beside = group.get("fused") or group.get("capturable")
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].to(dtype=torch.float32,
                                                 device=param.device if beside else "cpu")


def _check_same_dataset(state: dict, config: TrainConfig, dataset: Dataset, path: Path) -> None:
    """ConfigError when the folder a checkpoint trained on was prepared again with other content:
    its run would go on with other token ids. Another folder, named on purpose, may be used."""
    saved, now = state.get("dataset"), dataset_identity(dataset.meta)
    written = state.get("config") if isinstance(state.get("config"), dict) else {}
    same_folder = Path(str(written.get("data", ""))).resolve() == Path(config.data).resolve()
    if saved is not None and now is not None and same_folder and saved != now:
        raise ConfigError(str(config.data), f"is not the dataset {path} trained on: it was "
                          "prepared again since (its meta.json's hashes or token counts differ); "
                          "prepare it as it was, or name another folder in --config")


def configure_backends(config: TrainConfig, device: torch.device) -> None:
    # Set both ways: a reused process (a Ray actor's next trial, a replay) keeps torch's globals
    tf32 = device.type == "cuda" and config.fast
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    if config.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(config.deterministic)


def seeded_start(config: TrainConfig, device: torch.device
                 ) -> tuple[TransformerLM, torch.optim.Optimizer, torch.Generator]:
    """A run's model, optimizer and training-batch generator at step 0, seeded from config.seed."""
    torch.manual_seed(config.seed)
    model = TransformerLM(config.model, dropout=config.dropout, fast=config.fast).to(device)
    return model, build_optimizer(model, config), torch.Generator().manual_seed(config.seed + 1)


def autocast_for(config: TrainConfig, device: torch.device
                 ) -> Callable[[], contextlib.AbstractContextManager]:
    """The context a forward pass runs in: bf16 autocast for a `fast` run on CUDA, else none."""
    def autocast() -> contextlib.AbstractContextManager:
        if config.fast and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    return autocast


def forward_backward(runner: torch.nn.Module, dataset: Dataset, config: TrainConfig,
                     device: torch.device, batch_gen: torch.Generator,
                     autocast: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """The loss of the next training batch, its gradients accumulated."""
    x, y = get_batch(dataset.train, config.batch_size, config.model.context_length, device,
                     batch_gen)
    with autocast():
        loss = cross_entropy(runner(x), y, config.label_smoothing)
    loss.backward()
    return loss


def update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: float,
           grad_clip: float | None) -> torch.Tensor:
    """One optimizer step at `lr` on the accumulated gradients, clipped; their norm."""
    set_lr(optimizer, lr)
    grad_norm = clip_grad_norm(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def next_batch_noise(model: torch.nn.Module, dataset: Dataset, config: TrainConfig,
                     device: torch.device, batch_gen: torch.Generator,
                     autocast: Callable[[], contextlib.AbstractContextManager]
                     ) -> GradientNorms | None:
    """The gradient norms of the next training batch, drawn from a copy of `batch_gen` (the run
    still draws it next), measured with the eager `model` (a compiled one would compile the
    micro-batches' shape) as it trains (dropout too)."""
    ahead = torch.Generator().set_state(batch_gen.get_state())
    x, y = get_batch(dataset.train, config.batch_size, config.model.context_length, device, ahead)

    def loss_of(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        with autocast():
            return cross_entropy(model(xs), ys, config.label_smoothing)

    return gradient_norms(model, loss_of, x, y)


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: tuple[torch.Tensor, torch.Tensor], batch_size: int,
             autocast: Callable[[], contextlib.AbstractContextManager]) -> float:
    """Mean cross-entropy over the fixed validation windows."""
    was_training = model.training
    model.eval()
    x_all, y_all = windows
    total = torch.zeros((), device=x_all.device)
    for start in range(0, len(x_all), batch_size):
        x, y = x_all[start:start + batch_size], y_all[start:start + batch_size]
        with autocast():
            total += cross_entropy(model(x), y) * len(x)
    model.train(was_training)
    return float(total) / len(x_all)


def train(config: TrainConfig, on_eval: Callable[[EvalRecord], bool | None] | None = None,
          checkpoint_dir: str | Path | None = None, resume_from: str | Path | None = None,
          sample_at: Sequence[float] | None = None,
          checkpoint_now: Callable[[], bool] | None = None,
          on_checkpoint: Callable[[int, EvalRecord | None], None] | None = None,
          checkpoint_every_s: float = 0.0, checkpoint_at: Sequence[float] = (),
          on_fork: Callable[[ForkRecord], None] | None = None) -> TrainResult:
    """Train to T_total steps, evaluating as `config.evaluates_after` says and at the end;
    `on_eval` returning True stops.

    With `checkpoint_dir`, evaluations write a checkpoint: the last, the first at or past each
    token count of `checkpoint_at`, and the first `checkpoint_every_s` seconds after the one
    before (0: every one). `on_eval` sees such an evaluation (`checkpointed`) once its file is
    durable: with 0, before training goes on; else it is written in the background while
    training goes on, and a stop that `on_eval` asks for then comes a few steps later. Between
    steps, whenever `checkpoint_now()` says so (a notice of preemption), a checkpoint is written
    and `on_checkpoint(step, last evaluation)` called, and training goes on. `resume_from`
    continues any of them exactly where it left off. A text sample comes with every evaluation,
    or with `sample_at` (token counts where the caller may stop the run) only with the last one
    and the first at or past each count.
    """
    config.validate()
    device = resolve_device(config.device)
    dataset = Dataset.open(config.data, config.model.vocab_size, config.model.context_length)
    resume_state = read_checkpoint(resume_from) if resume_from is not None else None
    configure_backends(config, device)

    model, optimizer, batch_gen = seeded_start(config, device)
    schedule = LRSchedule.from_config(config)
    sample_gen = torch.Generator().manual_seed(config.seed + 2)
    result = TrainResult(status="completed", num_params=model.num_params(),
                         epochs=config.epochs(len(dataset.train)))
    step, noise = 0, NoiseScale()
    if resume_state is not None:
        missing = [key for key in RESUME_KEYS if key not in resume_state]
        if missing:
            raise ConfigError(str(checkpoint_path(resume_from)), "holds no "
                              f"{', '.join(missing)}: not a checkpoint train() can resume")
        saved = resume_state.get("config")
        written_by = saved.get("optimizer", config.optimizer) if isinstance(saved, dict) else \
            config.optimizer
        if written_by != config.optimizer:  # torch loads another optimizer's state unchecked
            raise ConfigError(str(checkpoint_path(resume_from)), "does not fit this config: it "
                              f"holds the state of optimizer {written_by}, not {config.optimizer}")
        # The config's hyperparameters win over the checkpoint's (PBT resumes with new ones).
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        try:
            model.load_state_dict(resume_state["model"])
            optimizer.load_state_dict(resume_state["optimizer"])
        except torch.OutOfMemoryError:  # a full GPU, not a bad checkpoint
            raise
        except (KeyError, RuntimeError, TypeError, ValueError) as err:  # another model shape
            reason = " ".join(str(err).split())  # or optimizer, or not a state dict at all
            raise ConfigError(str(checkpoint_path(resume_from)), "does not fit this config: "
                              f"{reason[:300]}") from None
        misfit = _optimizer_state_misfit(optimizer)
        if misfit:
            raise ConfigError(str(checkpoint_path(resume_from)),
                              f"does not fit this config: {misfit}")
        for group, values in zip(optimizer.param_groups, hyper):
            group.update(values)
        _place_steps(optimizer)
        try:
            schedule.load_state_dict(resume_state["schedule"])
            _set_rng_state(resume_state["rng"], batch_gen, sample_gen, device)
            result.records = [EvalRecord(**r) for r in resume_state["records"]]
            result.forks = [ForkRecord(**f) for f in resume_state.get("forks", [])]
            noise = NoiseScale(**resume_state.get("noise_scale", {}))  # none: written before it
            step = int(resume_state["iteration"])
        except torch.OutOfMemoryError:
            raise
        except (AttributeError, KeyError, RuntimeError, TypeError, ValueError) as err:
            raise ConfigError(str(checkpoint_path(resume_from)), "holds a damaged schedule, RNG "
                              f"state or records ({type(err).__name__}: {err})"[:400]) from None
        _check_same_dataset(resume_state, config, dataset, checkpoint_path(resume_from))
        if not 0 <= step <= config.steps:
            raise ConfigError(str(checkpoint_path(resume_from)), f"holds iteration {step}, outside "
                              f"the 0..{config.steps} steps of this config")

    runner = compiled(model, config) if compiles(config, device) else model
    autocast = autocast_for(config, device)
    tokenizer = _load_tokenizer(dataset) if config.sample_tokens > 0 else None
    if tokenizer is not None:
        _check_prompt(tokenizer, config.sample_prompt)
    windows = validation_windows(dataset.valid, config.model.context_length, config.eval_windows,
                                 device)
    if checkpoint_dir is not None and step < config.steps:  # a finished run writes nothing
        try:  # the last check: nothing is written before the config and its files are sound
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(str(checkpoint_dir), f"cannot be the checkpoint folder "
                              f"({err.strerror})") from None
    total_steps, per_step = config.steps, config.tokens_per_step
    flops, peak = flops_per_token(model), peak_flops(config, device)
    elapsed_before = result.records[-1].elapsed_s if result.records else 0.0
    run_start = interval_start = time.perf_counter()
    train_time = 0.0
    losses = LossTally(DIVERGENCE_FACTOR * math.log(config.model.vocab_size))
    if resume_state is not None and "losses" in resume_state:  # saved between evaluations
        losses.total, losses.count = resume_state["losses"]
    lr, grad_norm, unread, diverged = 0.0, 0.0, None, False

    def state() -> dict[str, Any]:
        """Where training is now, `losses` (this interval's) included: a checkpoint's content."""
        return checkpoint_state(
            model, optimizer, step, schedule=schedule.state_dict(),
            rng=_rng_state(batch_gen, sample_gen, device),
            records=[asdict(r) for r in result.records], tokens=step * per_step,
            config=config.to_dict(), dataset=dataset_identity(dataset.meta),
            losses=(losses.total, losses.count), forks=[asdict(f) for f in result.forks],
            noise_scale=noise.state_dict())

    def fork(start: int, steps: int) -> ForkRecord:
        """Train the fork that branches off here to its end and score it; then put the model,
        optimizer and RNGs back as they were."""
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        moments, rng = copy.deepcopy(optimizer.state_dict()), _rng_state(batch_gen, sample_gen,
                                                                          device)
        decay, val_loss = schedule.lasting(steps), None
        for t in range(start, steps):
            loss = forward_backward(runner, dataset, config, device, batch_gen, autocast)
            update(model, optimizer, decay.lr(t), config.grad_clip)
            if not float(loss.detach()) <= losses.limit:  # diverged (NaN too): no val_loss
                val_loss = math.inf
                break
        if val_loss is None:
            val_loss = evaluate(runner, windows, config.batch_size, autocast)
        model.load_state_dict(weights)
        optimizer.load_state_dict(moments)
        _place_steps(optimizer)
        _set_rng_state(rng, batch_gen, sample_gen, device)
        return ForkRecord(start=start, steps=steps, tokens=steps * per_step,
                          trained_tokens=(steps - start) * per_step, val_loss=val_loss)

    forks = [point for point in config.fork_points() if point[0] >= step]  # those still to come

    writer = CheckpointWriter(checkpoint_dir, device) if checkpoint_dir is not None else None
    pending: EvalRecord | None = None  # an evaluation whose checkpoint is on its way to the disk
    last_checkpoint = run_start

    def deliver() -> bool:
        """Hand the pending evaluation to `on_eval` once its checkpoint is durable; whether to
        stop."""
        nonlocal pending
        record, pending = pending, None
        result.checkpoint = writer.wait()
        return bool(on_eval(record)) if on_eval is not None else False

    model.train()
    try:
        while step < total_steps:
            if pending is not None and not writer.busy:
                begin = time.perf_counter()
                if deliver():
                    result.status = "stopped"
                    break
                interval_start += time.perf_counter() - begin  # not training time
            if checkpoint_now is not None and writer is not None and checkpoint_now():
                if pending is not None and deliver():
                    result.status = "stopped"
                    break
                if unread is not None:  # the last step's loss belongs to the saved interval
                    diverged, unread = losses.add(unread), None
                if not diverged:  # else this iteration goes on to record the divergence
                    writer.start(state())
                    result.checkpoint = writer.wait()
                    if on_checkpoint is not None:
                        on_checkpoint(step, result.records[-1] if result.records else None)
            while forks and forks[0][0] == step:
                begin = time.perf_counter()
                result.forks.append(fork(*forks.pop(0)))
                if on_fork is not None:
                    on_fork(result.forks[-1])
                interval_start += time.perf_counter() - begin  # not the main run's training time
            loss = forward_backward(runner, dataset, config, device, batch_gen, autocast)
            if unread is not None:  # the step before's loss, read once this step is queued, so the
                diverged = losses.add(unread)  # GPU has work while the CPU waits and goes on
            if not diverged:  # this step's gradients are dropped if the one before diverged
                lr = schedule.lr(step)
                grad_norm = update(model, optimizer, lr, config.grad_clip)
                step += 1
                unread = read_later(loss.detach())
                if not (step == total_steps or config.evaluates_after(step)):
                    continue
                diverged, unread = losses.add(unread), None

            if pending is not None and deliver():  # its write is late: wait for it
                result.status = "stopped"
                break
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            train_time = now - interval_start
            tokens_per_s = losses.count * per_step / train_time if train_time > 0 else 0.0
            val_loss = (math.inf if diverged
                        else evaluate(runner, windows, config.batch_size, autocast))
            tokens = step * per_step
            previous = result.records[-1].tokens if result.records else 0
            measured = None
            if not diverged and config.measures_noise_after(step, previous // per_step):
                norms = next_batch_noise(model, dataset, config, device, batch_gen, autocast)
                if norms is not None:
                    noise.add(norms)
                    measured = noise.sequences
            may_end_here = (sample_at is None or step == total_steps
                            or any(previous < mark <= tokens for mark in sample_at))
            sample = None
            if tokenizer is not None and not diverged and may_end_here:
                from model.generate import generate

                sample = generate(model, tokenizer, config.sample_prompt, config.sample_tokens,
                                  temperature=0.8, top_p=0.95, generator=sample_gen)
            checkpointed = writer is not None and not diverged and (
                step == total_steps or now - last_checkpoint >= checkpoint_every_s
                or any(previous < mark <= tokens for mark in checkpoint_at))
            record = EvalRecord(
                step=step, tokens=tokens, train_loss=losses.mean(),
                val_loss=val_loss, val_ppl=perplexity(val_loss), lr=lr, grad_norm=float(grad_norm),
                tokens_per_s=tokens_per_s,
                mfu=flops * tokens_per_s / peak if peak else math.nan,
                elapsed_s=elapsed_before + time.perf_counter() - run_start,
                checkpoint_s=writer.blocked_s if writer is not None else 0.0,
                noise_scale=measured,
                noise_scale_tokens=None if measured is None
                else measured * config.model.context_length,
                sample=sample, checkpointed=checkpointed)
            result.records.append(record)
            losses = LossTally(losses.limit)
            if not diverged:
                schedule.observe(val_loss, step)
            stop = False
            if checkpointed:  # on_eval sees it once the file is durable
                writer.start(state())
                pending, last_checkpoint = record, now
                if checkpoint_every_s <= 0:  # every evaluation: before training goes on
                    stop = deliver()
            elif on_eval is not None:
                stop = bool(on_eval(record))
            if diverged:
                result.status = "diverged"
                break
            if stop:
                result.status = "stopped"
                break
            interval_start = time.perf_counter()
        if pending is not None and deliver():
            result.status = "stopped"
    finally:
        if writer is not None:
            writer.close()
    result.steps, result.tokens = step, step * per_step
    return result


def _progress_line(record: EvalRecord, total_steps: int) -> str:
    mfu = "" if math.isnan(record.mfu) else f" mfu {record.mfu:.1%}"
    return (f"step {record.step:>6}/{total_steps} tokens {record.tokens:>11,} "
            f"train {record.train_loss:.4f} val {record.val_loss:.4f} ppl {record.val_ppl:8.2f} "
            f"lr {record.lr:.2e} |g| {record.grad_norm:.3f} {record.tokens_per_s:,.0f} tok/s{mfu}")


def main(argv: list[str] | None = None) -> int:
    """`python -m model.train (--config FILE | --resume CKPT) [--out DIR] [--device D]`."""
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__)
    parser.add_argument("--config", help="YAML or JSON trainer config (default with --resume: "
                        "the checkpoint's own)")
    parser.add_argument("--out", help="folder for checkpoints (default: the --resume folder "
                        "when resuming with its own config, else runs/train)")
    parser.add_argument("--resume", help="checkpoint file or folder to continue from")
    parser.add_argument("--device", help="override the config's device (auto, cpu, cuda, cuda:1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); a "
                        "study's trials use its cpus_per_trial, and CPU losses match theirs "
                        "exactly with the same count")
    args = parser.parse_args(argv)
    if args.config is None and args.resume is None:
        parser.error("give --config FILE, or --resume CHECKPOINT to continue a run")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads {args.threads}: give 1 or more")
        torch.set_num_threads(args.threads)
    own = args.resume and not args.config  # another config branches off: keep the original
    out = Path(args.out or (checkpoint_path(args.resume).parent if own else "runs/train"))
    try:
        config = (load_train_config(args.config) if args.config
                  else checkpoint_config(args.resume))
        if args.device is not None:  # "" too: refused by name, not ignored
            config.device = args.device
        result = train(config, on_eval=lambda r: print(_progress_line(r, config.steps), flush=True),
                       checkpoint_dir=out, resume_from=args.resume,
                       on_fork=lambda f: print(f"fork   {f.start:>6}→{f.steps} tokens "
                                               f"{f.tokens:>11,} val {f.val_loss:.4f}", flush=True))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # checkpoints are written whole: the last one is sound
        saved = checkpoint_path(out)
        print("interrupted; " + (f"continue it with: "
                                 f"{as_started(f'python -m model.train --resume {out}')}"
                                 if saved.is_file() else "no checkpoint was written yet"),
              file=sys.stderr)
        return 130
    final = result.final
    print(f"{result.status}: {result.steps} steps, {result.tokens:,} tokens (N_epoch "
          f"{result.epochs}), {result.num_params:,} parameters; best val_loss "
          f"{result.best_val_loss:.4f}"
          + (f"; final val_loss {final.val_loss:.4f} (ppl {final.val_ppl:.2f})" if final else "")
          + (f"; checkpoint {checkpoint_path(out)}" if result.checkpoint else ""))
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    stops_as_ctrl_c()
    sys.exit(main())
