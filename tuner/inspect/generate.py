"""`tuner generate`: continue a prompt with a trained checkpoint (a file or a trial run's
artifact)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.config import ConfigError, TrainConfig, train_config_from_dict
from tuner.errors import UserError


def load_model(checkpoint: Path, device: str) -> tuple[Any, TrainConfig, str | None]:
    """The model a checkpoint holds, its config, and the sha256 of the tokenizer it trained with
    (None if it names none); read with weights_only, so a file cannot run code."""
    from model.checkpoint import read_checkpoint
    from model.layers import TransformerLM
    from model.train import resolve_device

    target = resolve_device(device)
    state = read_checkpoint(checkpoint)
    if not isinstance(state.get("config"), dict):
        raise UserError(f"{checkpoint}: the checkpoint holds no trainer config")
    try:
        config = train_config_from_dict(state["config"])
        model = TransformerLM(config.model)
        model.load_state_dict(state["model"])
    except (ConfigError, TypeError, RuntimeError) as err:
        detail = " ".join(str(err).split())[:300]  # torch's first line names no tensor
        raise UserError(f"{checkpoint}: its weights do not fit its config ({detail})") from None
    if not all(tensor.isfinite().all() for tensor in model.state_dict().values()):
        raise UserError(f"{checkpoint}: holds weights that are not finite (NaN or inf): no "
                        "text can be sampled from it")
    dataset = state.get("dataset") if isinstance(state.get("dataset"), dict) else {}
    return model.to(target).eval(), config, dataset.get("sha256", {}).get("tokenizer")


def load_tokenizer(dataset: Path) -> Any:
    """The tokenizer of a prepared dataset folder (vocab.json, merges.txt, meta.json)."""
    from model.tokenizer import Tokenizer

    if not (dataset / "vocab.json").is_file():
        raise UserError(f"no tokenizer (vocab.json) in {dataset}: pass --data, the prepared "
                        "dataset folder the model was trained on")
    try:
        return Tokenizer.from_dir(dataset)
    except (OSError, ValueError) as err:
        raise UserError(f"tokenizer in {dataset} cannot be read ({err})") from None


def tokenizer_of(checkpoint: Path, config: TrainConfig, trained_with: str | None,
                 data: Path | None, *, recorded: bool = False) -> Any:
    """The tokenizer the checkpoint trained with: in `data`, else the dataset folder its config
    names; UserError naming the files when there is none, or it has ids beyond the model's
    vocabulary, or it is another (the sha256 of its vocab.json and merges.txt differs from the
    one the checkpoint recorded); with `recorded`, also when the checkpoint recorded none."""
    from tuner.datasets import tokenizer_sha256

    if data is None and not isinstance(config.data, str):
        raise UserError(f"{checkpoint}: its config names no dataset folder (data: "
                        f"{config.data!r}): pass --data, the folder with its tokenizer")
    folder = data or Path(config.data)
    tokenizer = load_tokenizer(folder)
    vocab, files = folder / "vocab.json", f"{folder / 'vocab.json'} and merges.txt"
    if tokenizer.vocab_size > config.model.vocab_size:
        raise UserError(f"{vocab} has ids (e.g. {config.model.vocab_size}) beyond the model's "
                        f"vocabulary of {config.model.vocab_size}: not its tokenizer")
    if trained_with is None and recorded:
        raise UserError(f"{checkpoint} records no sha256 of the tokenizer it trained with: "
                        f"{files} cannot be checked against it")
    if trained_with is not None and (found := tokenizer_sha256(folder)) != trained_with:
        raise UserError(f"{files}: not the tokenizer {checkpoint} trained with (their sha256 is "
                        f"{found[:12]}…, it recorded {trained_with[:12]}…): pass --data, the "
                        "dataset folder it trained on")
    return tokenizer


def generate_text(checkpoint: Path, prompt: str, *, data: Path | None = None,
                  max_new_tokens: int = 64, temperature: float = 0.8, top_p: float = 0.95,
                  seed: int = 0, device: str = "auto") -> str:
    """The continuation of `prompt` (without the prompt), sampled with a seeded generator."""
    import torch

    from model.generate import generate, prompt_ids

    model, config, trained_with = load_model(checkpoint, device)
    tokenizer = tokenizer_of(checkpoint, config, trained_with, data)
    try:
        prompt_ids(tokenizer, prompt)  # an empty one without an end-of-text token
    except ConfigError as err:  # the trainer names its own field: here it is the option
        raise UserError(f"--prompt: {err.message}") from None
    generator = torch.Generator().manual_seed(seed)
    return generate(model, tokenizer, prompt, max_new_tokens, temperature=temperature,
                    top_p=top_p, generator=generator)
