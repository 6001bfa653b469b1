"""Tokenizer benchmark: BPE training and encoding speed and memory, beside HF tokenizers, tiktoken.

    uv run python benchmarks/tokenizer.py [--data tests/fixtures] [--repeats 3] [--stream-mb 100]

Each measurement runs in a fresh process (peak memory is that process's ru_maxrss) and the median
of the repeats is reported. Prints markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EOT = "<|endoftext|>"
CORPORA = ("tinystories_2MiB.txt", "tinyshakespeare.txt")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- measurements, each run in a child process: `tokenizer.py _measure KIND JSON-ARGS` ----------

def train_ours(path: str, vocab_size: int) -> dict:
    from model.bpe import train_bpe

    start = time.perf_counter()
    train_bpe(path, vocab_size, [EOT])
    return {"seconds": time.perf_counter() - start, "peak_mib": peak_mib()}


def train_hf(path: str, vocab_size: int) -> dict:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    start = time.perf_counter()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([path], trainer)
    return {"seconds": time.perf_counter() - start, "peak_mib": peak_mib()}


def encode_speed(tokenizer_dir: str, path: str, workers: int) -> dict:
    """MB/s of our Tokenizer.encode_file (fresh: its cache starts empty; reading the file
    included) and of tiktoken's encode of the text, built with the same merges."""
    import tiktoken

    from model.bpe import GPT2_PATTERN
    from model.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(tokenizer_dir)
    data = Path(path).read_bytes()
    text = data.decode()
    start = time.perf_counter()
    chunks = list(tok.encode_file(path, workers=workers))
    seconds = time.perf_counter() - start
    specials = {s: tok.encode(s)[0] for s in tok.special_tokens}
    ranks = {b: i for i, b in tok.vocab.items() if i not in specials.values()}
    enc = tiktoken.Encoding("same-merges", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens=specials)
    start = time.perf_counter()
    theirs = enc.encode(text, allowed_special="all")
    tik_seconds = time.perf_counter() - start
    ours = list(itertools.chain.from_iterable(chunks))
    mb = len(data) / 1e6
    return {"ours_mbs": mb / seconds, "tiktoken_mbs": mb / tik_seconds, "same_ids": ours == theirs}


def stream_memory(tokenizer_dir: str, corpus: str, megabytes: int) -> dict:
    """Peak RSS while encode_iterable eats `megabytes` of lines generated from a corpus."""
    from model.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(tokenizer_dir)
    lines = Path(corpus).read_text().splitlines(keepends=True)
    budget = megabytes * 1_000_000

    def generate():
        sent = 0
        for line in itertools.cycle(lines):
            if sent >= budget:
                return
            sent += len(line)
            yield line

    before = peak_mib()
    start = time.perf_counter()
    count = sum(1 for _ in tok.encode_iterable(generate()))
    return {"tokens": count, "seconds": time.perf_counter() - start, "peak_mib": peak_mib(),
            "before_mib": before}


MEASURES = {"train_ours": train_ours, "train_hf": train_hf, "encode": encode_speed,
            "stream": stream_memory}


def measure(kind: str, *args, repeats: int = 1) -> dict:
    """Median over `repeats` fresh child processes of one measurement's numbers."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "_measure", kind, json.dumps(args)],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    numeric = {k for k, v in runs[0].items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: statistics.median(r[k] for r in runs) if k in numeric else v
            for k, v in runs[0].items()}


# --- the report ----------------------------------------------------------------------------------

def versions() -> str:
    names = ("numpy", "regex", "tiktoken", "tokenizers")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return f"Python {platform.python_version()}, " + ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "fixtures")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream-mb", type=int, default=100)
    parser.add_argument("--vocab-size", type=int, default=10_000)
    args = parser.parse_args()
    from model.bpe import default_workers, train_bpe
    from model.tokenizer import Tokenizer

    cores = default_workers()
    print(f"{time.strftime('%Y-%m-%d')}; {platform.machine()}, {cores} cores, "
          f"load average {os.getloadavg()[0]:.1f}; {versions()}\n")

    print(f"| BPE training, vocab {args.vocab_size} | ours s | HF tokenizers s | ratio | "
          "ours peak MiB | HF peak MiB |\n|---|---|---|---|---|---|")
    for name in CORPORA:
        path = str(args.data / name)
        ours = measure("train_ours", path, args.vocab_size, repeats=args.repeats)
        hf = measure("train_hf", path, args.vocab_size, repeats=args.repeats)
        print(f"| {name} | {ours['seconds']:.2f} | {hf['seconds']:.2f} | "
              f"{ours['seconds'] / hf['seconds']:.2f}× | {ours['peak_mib']:.0f} | "
              f"{hf['peak_mib']:.0f} |")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = tmp / "small.txt"
        small.write_bytes((args.data / "tinystories_2MiB.txt").read_bytes()[:130_000])
        ours = measure("train_ours", str(small), 500, repeats=args.repeats)
        hf = measure("train_hf", str(small), 500, repeats=args.repeats)
        print(f"| 130 KB of tinystories, vocab 500 | {ours['seconds']:.3f} | {hf['seconds']:.3f} | "
              f"{ours['seconds'] / hf['seconds']:.2f}× | {ours['peak_mib']:.0f} | "
              f"{hf['peak_mib']:.0f} |\n")

        stories = args.data / "tinystories_2MiB.txt"
        vocab, merges = train_bpe(stories, args.vocab_size, [EOT])
        tok_dir = tmp / "tok"
        Tokenizer(vocab, merges, [EOT]).save(tok_dir)
        (tok_dir / "meta.json").write_text(json.dumps({"special_tokens": [EOT]}))
        big = tmp / "stories_16MiB.txt"
        big.write_bytes(stories.read_bytes() * 8)
        print(f"| encoding (vocab {args.vocab_size}, trained on tinystories) | processes | "
              "ours MB/s | tiktoken MB/s (1 thread) | ratio | same ids |\n"
          "|---|---|---|---|---|---|")
        for path, workers in [(stories, 1), (args.data / "tinyshakespeare.txt", 1), (big, 1),
                              (big, cores)]:
            r = measure("encode", str(tok_dir), str(path), workers, repeats=args.repeats)
            print(f"| {path.name} | {workers} | {r['ours_mbs']:.2f} | {r['tiktoken_mbs']:.2f} | "
                  f"{r['ours_mbs'] / r['tiktoken_mbs']:.2f} | {r['same_ids']} |")

        print("\n| encode_iterable input | tokens | seconds | peak RSS MiB | RSS before MiB |\n"
              "|---|---|---|---|---|")
        for mb in (10, args.stream_mb):
            r = measure("stream", str(tok_dir), str(stories), mb)
            print(f"| {mb} MB of tinystories lines | {r['tokens']:,} | {r['seconds']:.1f} | "
                  f"{r['peak_mib']:.0f} | {r['before_mib']:.0f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        print(json.dumps(MEASURES[sys.argv[2]](*json.loads(sys.argv[3]))))
    else:
        main()
