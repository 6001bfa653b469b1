"""Prepared dataset folders: text tokenized once into train.npy/valid.npy, tokenizer, meta.json.

A folder is built in a temporary sibling and renamed into place, so it is complete or absent; a
later request with the same inputs (by sha256) and options reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from model.bpe import (
    DEFAULT_SPECIAL_TOKENS,
    check_special_tokens,
    check_vocab_size,
    next_cut,
    read_text,
    train_bpe,
)
from model.tokenizer import Tokenizer
from tuner.download import file_sha256
from tuner.errors import UserError
from tuner.folder_lock import folder_lock

SOURCES = ("files", "synthetic", "tinystories")
STAGE_MARK = ".partial-"  # a folder being built: .NAME.partial-PID-RANDOM beside NAME
FORMAT = 1  # bump when the folder layout or the tokenization changes: old folders are rebuilt
REQUIRED_META = {"vocab_size": int, "dtype": str, "train_tokens": int, "valid_tokens": int}
DATASET_FILES = {"meta.json", "vocab.json", "merges.txt", "train.npy", "valid.npy"}
TOKEN_DTYPES = ("uint16", "uint32")  # what model.token_files reads
_SCAN = 1 << 24  # tokens per step when scanning an array for its largest id

Advance = Callable[[int], None]


def prepare_dataset(*, source: str = "files", input: Path | None = None, valid: Path | None = None,
                    valid_fraction: float = 0.05, vocab_size: int,
                    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
                    tokenizer: Path | None = None, out: Path | None = None,
                    synthetic_bytes: int = 2_000_000, seed: int = 0,
                    cache_dir: Path = Path(".tuner/data"), progress: bool = True) -> Path:
    """Build (or reuse) a dataset folder and return its path; UserError for bad input.

    Without `valid`, the last valid_fraction of the input (cut at a story boundary) is the
    validation text. Without `tokenizer`, a BPE tokenizer is trained on the training text.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    specials = list(dict.fromkeys(special_tokens))
    cache_dir = Path(cache_dir)
    _check_options(source, input, valid, valid_fraction, vocab_size, specials, tokenizer)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        def step(description: str, total: int) -> Advance:
            task = bar.add_task(description, total=total)
            return lambda n: bar.advance(task, n)

        with tempfile.TemporaryDirectory(prefix="tuner-") as scratch:
            inputs = _resolve_inputs(source, input, valid, synthetic_bytes, seed, cache_dir,
                                     Path(scratch), progress)
            hashes = {role: file_sha256(path, step(f"hashing {path.name}", path.stat().st_size))
                      for role, path in inputs.items()}
            if tokenizer is not None:
                hashes["tokenizer_input"] = tokenizer_sha256(Path(tokenizer))
            request = {"format": FORMAT, "source": source, "vocab_size": vocab_size,
                       "special_tokens": specials, "inputs": hashes,
                       "valid_fraction": None if "valid" in inputs else valid_fraction}
            if source == "synthetic":
                request.update(synthetic_bytes=synthetic_bytes, seed=seed)
            key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:12]
            out = Path(out) if out is not None else cache_dir / f"{source}-{key}"
            if not _reusable(out, request):
                folder = out.parent.resolve()
                _publish(out, request, lambda stage: _build(stage, inputs, request, tokenizer,
                                                            specials, step),
                         on_wait=lambda: bar.console.print(
                             f"waiting for another process preparing a dataset in {folder}",
                             markup=False, highlight=False, soft_wrap=True))
    return out


def check_dataset(path: Path) -> dict:
    """Check a dataset folder (files, meta.json against the arrays, ids < vocab_size); its meta."""
    path = Path(path)
    if not path.is_dir():
        what = "a file, not a dataset folder" if path.exists() else "no such dataset folder"
        raise UserError(f"{path}: {what}; create one with `tuner data prepare`")
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{meta_path}: missing; prepare the folder again") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{meta_path}: unreadable ({err}); prepare the folder again") from None
    meta = meta if isinstance(meta, dict) else {}
    wrong = [k for k, kind in REQUIRED_META.items() if type(meta.get(k)) is not kind]
    if not isinstance(meta.get("sha256", {}), dict):
        wrong.append("sha256")
    if wrong:
        raise UserError(f"{meta_path}: {', '.join(wrong)} missing or of the wrong type; prepare "
                        "the folder again")
    if meta["dtype"] not in TOKEN_DTYPES:
        raise UserError(f"{meta_path}: dtype {meta['dtype']}, but the trainer reads "
                        f"{' or '.join(TOKEN_DTYPES)} token ids; prepare the folder again")
    for split in ("train", "valid"):
        _check_array(path / f"{split}.npy", meta, meta[f"{split}_tokens"])
    if meta["vocab_size"] > np.iinfo(meta["dtype"]).max + 1:
        raise UserError(f"{meta_path}: vocab_size {meta['vocab_size']} does not fit its dtype "
                        f"{meta['dtype']}; prepare the folder again")
    if (path / "vocab.json").exists():  # the trainer loads it to write its text samples
        try:
            size = Tokenizer.from_dir(path).vocab_size
        except FileNotFoundError as err:  # merges.txt: not an errno's words
            raise UserError(f"{err.filename}: missing; prepare the folder again") from None
        except (OSError, ValueError) as err:
            raise UserError(f"{err}; prepare the folder again") from None
        if size != meta["vocab_size"]:
            raise UserError(f"{meta_path}: vocab_size {meta['vocab_size']}, but its tokenizer "
                            f"has {size} tokens; prepare the folder again")
    if "tokenizer" in meta.get("sha256", {}):
        try:
            digest = tokenizer_sha256(path)
        except UserError as err:
            raise UserError(f"{err}; prepare the folder again") from None
        if digest != meta["sha256"]["tokenizer"]:
            raise UserError(f"{path / 'vocab.json'}: the tokenizer files do not match the sha256 "
                            f"in {meta_path}; prepare the folder again")
    return meta


def _check_options(source: str, input: Path | None, valid: Path | None, valid_fraction: float,
                   vocab_size: int, specials: list[str], tokenizer: Path | None) -> None:
    if source not in SOURCES:
        raise UserError(f"--source {source}: unknown; use one of {', '.join(SOURCES)}")
    if source == "files" and input is None:
        raise UserError("--input: required with --source files; name the training text file")
    if source != "files" and (input is not None or valid is not None):
        raise UserError(f"--input/--valid: not used with --source {source}; drop them")
    if valid is None and not 0 < valid_fraction < 1:
        raise UserError(f"--valid-fraction {valid_fraction}: must be between 0 and 1 "
                        "(or pass --valid FILE)")
    if "" in specials:
        raise UserError("--special-token: empty; give each special token at least one character")
    try:
        check_special_tokens(specials)
    except ValueError as err:
        raise UserError(f"--special-token {err}") from None
    if tokenizer is None:
        try:
            check_vocab_size(vocab_size, specials)
        except ValueError as err:
            raise UserError(f"--vocab-size: {err}") from None
    for role, path in (("--input", input), ("--valid", valid)):
        if path is not None:
            _check_readable(Path(path), role)


def _check_readable(path: Path, role: str) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such file ({role}); check the path")
    if not path.is_file():
        raise UserError(f"{path}: not a regular file ({role}); name a text file")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror}); check its permissions") from None
    if empty:
        raise UserError(f"{path}: the file is empty ({role}); name a file with text in it")


def _resolve_inputs(source: str, input: Path | None, valid: Path | None, synthetic_bytes: int,
                    seed: int, cache_dir: Path, scratch: Path, progress: bool) -> dict[str, Path]:
    """Role ("input", and "valid" when separate) -> a local UTF-8 text file."""
    if source == "files":
        return {"input": Path(input)} | ({"valid": Path(valid)} if valid is not None else {})
    if source == "tinystories":
        from tuner.download import tinystories

        files = tinystories(cache_dir / "downloads", progress=progress)
        return {"input": files["train"], "valid": files["valid"]}
    from tuner.synthetic import generate_stories

    if synthetic_bytes <= 0:
        raise UserError(f"--synthetic-bytes {synthetic_bytes}: must be positive")
    text = scratch / "synthetic.txt"
    text.write_text(generate_stories(synthetic_bytes, seed), encoding="utf-8")
    return {"input": text}


def _publish(out: Path, request: dict, build: Callable[[Path], None],
             on_wait: Callable[[], None]) -> None:
    """Run build on an empty sibling folder of out, then rename it to out; on failure, remove it.
    One process at a time builds in out's folder: one that waited reuses what the other built."""
    _check_target(out)
    made = [folder for folder in (out.parent, *out.parent.parents) if not folder.exists()]
    # named before it is made, so a Ctrl-C at any point after finds it to remove
    stage = out.parent / f".{out.name}{STAGE_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with folder_lock(out.parent, on_wait) as locked:
            if locked:  # builders hold the lock: these were left by one killed (SIGKILL)
                for left in out.parent.glob(f".*{STAGE_MARK}*"):
                    shutil.rmtree(left, ignore_errors=True)
            if _reusable(out, request):
                return
            try:
                stage.mkdir()
            except OSError as err:  # named as given, not as the hidden folder it builds in
                raise UserError(f"{out}: cannot be written ({err.strerror})") from None
            stage.chmod(0o755)
            build(stage)
            replace_folder(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in made:  # deepest first; one another process uses now is not empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _build(stage: Path, inputs: dict[str, Path], request: dict, tokenizer_dir: Path | None,
           specials: list[str], step: Callable[[str, int], Advance]) -> None:
    """Write the tokenizer, the token arrays and meta.json into stage."""
    train_path = inputs["input"]
    size = train_path.stat().st_size
    if "valid" in inputs:
        train_span, valid_path, valid_span = (0, size), inputs["valid"], None
    else:
        cut = _split_point(train_path, specials, size, request["valid_fraction"])
        train_span, valid_path, valid_span = (0, cut), train_path, (cut, size)
    try:
        if tokenizer_dir is None:
            tokenizer = _train(train_path, train_span, request["vocab_size"], specials, step)
        else:
            tokenizer = _load_tokenizer(Path(tokenizer_dir), specials, request["vocab_size"])
        tokenizer.save(stage)
        dtype = "uint16" if tokenizer.vocab_size <= 65535 else "uint32"
        counts = {}
        for split, path, span in (("train", train_path, train_span),
                                  ("valid", valid_path, valid_span)):
            start, end = span or (0, path.stat().st_size)
            advance = step(f"encoding {split} ({path.name})", end - start)
            chunks = tokenizer.encode_file(path, start, end, progress=advance)
            counts[split] = _write_npy(stage / f"{split}.npy", chunks, dtype)
            if split == "train":
                _check_varied(stage / "train.npy", train_path, tokenizer)
    except ValueError as err:  # invalid UTF-8 and the like: the message names the file
        raise UserError(str(err)) from None
    except OSError as err:
        raise UserError(f"{err.filename}: {err.strerror}") from None
    meta = {
        "format": FORMAT, "source": request["source"], "vocab_size": tokenizer.vocab_size,
        "dtype": dtype, "train_tokens": counts["train"], "valid_tokens": counts["valid"],
        "special_tokens": specials, "tokenizer": str(tokenizer_dir) if tokenizer_dir else "trained",
        "inputs": {} if request["source"] == "synthetic" else {
            role: str(path.resolve()) for role, path in inputs.items()},
        "valid_fraction": request["valid_fraction"], "request": request,
        "sha256": {**request["inputs"], "tokenizer": tokenizer_sha256(stage)},
    }
    (stage / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _check_varied(tokens_path: Path, text_path: Path, tokenizer: Tokenizer) -> None:
    """UserError naming the text when its training tokens, special tokens aside, are one id
    repeated or none: a model learns nothing from them."""
    tokens = np.load(tokens_path, mmap_mode="r")
    specials = [tokenizer.encode(token)[0] for token in tokenizer.special_tokens]
    seen = None
    for start in range(0, len(tokens), _SCAN):  # real text differs in the first step
        chunk = tokens[start:start + _SCAN]
        others = chunk[~np.isin(chunk, specials)]
        if seen is None and len(others):
            seen = others[0]
        if (others != seen).any():
            return
    what = ("special tokens alone" if seen is None else
            f"one token, {tokenizer.decode([int(seen)])!r}, repeated (special tokens aside)")
    raise UserError(f"{text_path}: a model learns nothing from its training text, {what}; name "
                    "a file with text in it")


def _train(path: Path, span: tuple[int, int], vocab_size: int, specials: list[str],
           step: Callable[[str, int], Advance]) -> Tokenizer:
    counting = step(f"counting pre-tokens ({path.name})", span[1] - span[0])
    merging = step("merging pairs", vocab_size - 256 - len(specials))
    vocab, merges = train_bpe(path, vocab_size, specials, start=span[0], end=span[1],
                              count_progress=counting, merge_progress=merging)
    return Tokenizer(vocab, merges, specials)


def read_tokenizer(folder: Path, specials: Sequence[str]) -> Tokenizer:
    """The tokenizer in `folder` (vocab.json, merges.txt) with `specials`; UserError naming the
    file that is missing or unreadable."""
    try:
        return Tokenizer.from_files(folder / "vocab.json", folder / "merges.txt", specials)
    except FileNotFoundError as err:
        raise UserError(f"{err.filename}: no such file; a tokenizer folder holds vocab.json and "
                        "merges.txt") from None
    except (OSError, ValueError) as err:
        raise UserError(str(err)) from None


def _load_tokenizer(folder: Path, specials: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = read_tokenizer(folder, specials)
    if tokenizer.vocab_size != vocab_size:
        raise UserError(f"--vocab-size {vocab_size}: the tokenizer in {folder} has "
                        f"{tokenizer.vocab_size} tokens (special tokens included); pass that")
    return tokenizer


def _split_point(path: Path, specials: list[str], size: int, fraction: float) -> int:
    """Where validation text starts: the first safe cut after (1 - fraction) of the file."""
    cut = next_cut(path, specials, int(size * (1 - fraction)), size)
    if cut == 0:
        raise UserError(f"{path}: --valid-fraction {fraction} leaves no training text (the first "
                        "story boundary in its last part is its start); lower it, or pass "
                        "--valid FILE")
    if cut is None:
        _check_utf8_start(path, size)  # a file in another encoding: say that, not "no boundary"
        raise UserError(f"{path}: no story boundary (a special token or a line break) in its "
                        f"last {fraction * 100:.3g}% to split validation text at; pass --valid "
                        "FILE")
    return cut


def _check_utf8_start(path: Path, size: int, span: int = 1 << 20) -> None:
    """UserError when the file's first MiB is not UTF-8 (a character cut at its end aside)."""
    end = min(size, span)
    try:
        read_text(path, 0, end)
    except ValueError as err:
        if end == size or "unexpected end of data" not in str(err):
            raise UserError(str(err)) from None


def _write_npy(dest: Path, chunks: Iterable[array], dtype: str) -> int:
    """Stream id arrays into a 1-D .npy file; the number of ids."""
    def header(n: int) -> dict:
        return {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (n,)}

    limit = np.iinfo(dtype).max
    count = 0
    with open(dest, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header(0))
        for chunk in chunks:
            ids = np.frombuffer(chunk, dtype=np.int64)
            if len(ids) and int(ids.max()) > limit:
                raise ValueError(f"token id {int(ids.max())} does not fit {dtype}")
            f.write(ids.astype(dtype).tobytes())
            count += len(ids)
        # numpy pads the header so a longer shape fits in place
        f.seek(0)
        np.lib.format.write_array_header_1_0(f, header(count))
    return count


def _check_array(path: Path, meta: dict, length: int) -> None:
    try:
        tokens = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise UserError(f"{path}: missing; prepare the folder again") from None
    except (OSError, ValueError, EOFError) as err:  # EOFError: an empty file
        raise UserError(f"{path}: not a readable .npy array ({err}); prepare the folder again"
                        ) from None
    if tokens.ndim != 1 or tokens.dtype != np.dtype(meta["dtype"]):  # the byte order too
        order = " big-endian" if tokens.dtype.byteorder == ">" else ""
        raise UserError(f"{path}: a {tokens.ndim}-D{order} {tokens.dtype.name} array, but "
                        f"meta.json says 1-D {meta['dtype']}; prepare the folder again")
    if len(tokens) != length:
        raise UserError(f"{path}: {len(tokens)} tokens, but meta.json says {length}; prepare "
                        "the folder again")
    for start in range(0, len(tokens), _SCAN):
        top = int(tokens[start:start + _SCAN].max())
        if top >= meta["vocab_size"]:
            raise UserError(f"{path}: token id {top} is not below vocab_size={meta['vocab_size']} "
                            "of meta.json; prepare the folder again")


def _reusable(out: Path, request: dict) -> bool:
    """True when out holds a complete, consistent dataset made from the same request."""
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    if meta.get("request") != request:
        return False
    try:
        check_dataset(out)
    except UserError:
        return False
    return True


def _check_target(out: Path) -> None:
    """Refuse to replace a folder that is not a dataset folder (it may hold someone's files):
    one with anything but a dataset's files, or those without their meta.json."""
    blocking = next((folder for folder in out.parents if folder.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise UserError(f"{out}: {blocking} is a file, not a folder; choose another --out")
    if not out.exists():
        return
    names = {entry.name for entry in out.iterdir()} if out.is_dir() else {""}
    if names and ("meta.json" not in names or not names <= DATASET_FILES):
        raise UserError(f"{out}: exists and is not a dataset folder; choose another --out")


def replace_folder(stage: Path, out: Path) -> None:
    """Move the finished stage folder to out, replacing an older dataset folder there."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / out.name)
        os.rename(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(stage, out)


def tokenizer_sha256(folder: Path) -> str:
    """sha256 over vocab.json then merges.txt."""
    digest = hashlib.sha256()
    for name in ("vocab.json", "merges.txt"):
        try:
            digest.update((folder / name).read_bytes())
        except OSError as err:
            raise UserError(f"{folder / name}: {err.strerror or err}; a tokenizer folder needs "
                            "vocab.json and merges.txt") from None
    return digest.hexdigest()
