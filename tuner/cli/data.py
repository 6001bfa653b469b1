"""`tuner data ...`: prepare tokenized dataset folders and check them."""

from __future__ import annotations

from pathlib import Path

import typer

from model.bpe import DEFAULT_SPECIAL_TOKENS
from tuner.cli.args import folder
from tuner.errors import UserError

app = typer.Typer(help="Prepare and check tokenized datasets.", no_args_is_help=True)


@app.command()
def prepare(
    input: Path | None = typer.Option(
        None, "--input", help="Training text (UTF-8) for --source files."),
    valid: Path | None = typer.Option(
        None, "--valid", help="Validation text; else a fraction of --input."),
    valid_fraction: float | None = typer.Option(
        None, "--valid-fraction", help="Share of --input kept for validation (default 0.05)."),
    vocab_size: int = typer.Option(..., "--vocab-size", help="Tokens, special tokens included."),
    special_token: list[str] = typer.Option(
        list(DEFAULT_SPECIAL_TOKENS), "--special-token",
        help="A special token (repeat for several)."),
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", help="Folder with vocab.json and merges.txt to use, not train."),
    out: Path | None = typer.Option(
        None, "--out", help="Dataset folder (default: one in --cache-dir named by a hash).",
        parser=folder, metavar="<dir>"),
    source: str = typer.Option("files", "--source", help="files, synthetic or tinystories."),
    synthetic_bytes: int = typer.Option(
        2_000_000, "--synthetic-bytes", help="Size of the synthetic text."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the synthetic stories."),
    cache_dir: Path = typer.Option(
        Path(".tuner/data"), "--cache-dir", help="Downloads and prepared datasets.",
        parser=folder, metavar="<dir>"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Tokenize text into train.npy/valid.npy with a BPE tokenizer; reuse a matching earlier run."""
    from tuner.datasets import prepare_dataset

    if valid is not None and valid_fraction is not None:
        raise UserError("--valid and --valid-fraction exclude each other; pass one")
    folder = prepare_dataset(
        source=source, input=input, valid=valid,
        valid_fraction=0.05 if valid_fraction is None else valid_fraction,
        vocab_size=vocab_size, special_tokens=special_token, tokenizer=tokenizer, out=out,
        synthetic_bytes=synthetic_bytes, seed=seed, cache_dir=cache_dir, progress=progress)
    made = _summary(folder)["vocab_size"]
    if made < vocab_size:  # BPE ran out of pairs to merge: the text is too short for the size
        typer.echo(f"warning: the vocabulary has {made:,} tokens, not the {vocab_size:,} of "
                   f"--vocab-size: no pair of tokens was left to merge in the training text",
                   err=True)


@app.command()
def check(folder: Path = typer.Argument(..., help="A prepared dataset folder.")) -> None:
    """Check a dataset folder: files present, meta.json consistent with the token arrays."""
    _summary(folder)


def _summary(folder: Path) -> dict:
    """Check the folder and print its sizes; its meta.json."""
    from tuner.datasets import check_dataset

    meta = check_dataset(folder)
    typer.echo(f"{folder}: {meta['train_tokens']:,} train + {meta['valid_tokens']:,} valid tokens, "
               f"vocab {meta['vocab_size']:,} ({meta['dtype']})")
    return meta
