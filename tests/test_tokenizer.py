"""Tokenizer: GPT-2 ids as tiktoken gives them, round trips, streaming, special tokens, files."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from model import tokenizer as tokenizer_module
from model.bpe import GPT2_PATTERN, PRETOKEN_RE, train_bpe
from model.tokenizer import Tokenizer

EOT = "<|endoftext|>"
TRICKY = [
    "", " ", "  \n\n  \t", "Hello, world!", "I'm you're they'll we've he'd it's 'LL",
    "x  y   z    \n", "numbers 12345 and 3.14159", "héllo wörld — ünïcödé", "日本語のテキスト",
    "emoji 🙂👍🏽 and \u200b zero width", "tabs\tand\r\nwindows\r\nlines", "a<|endoftext|>b",
    "<|endoftext|><|endoftext|>", "<|endoftext", "'s's's", "  leading and trailing  ",
]
TIKTOKEN_ENCODER = "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6"  # sha1 of encoder.json's URL
TIKTOKEN_VOCAB_BPE = "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"  # sha1 of vocab.bpe's URL


@pytest.fixture(scope="module")
def gpt2(corpora: Path) -> Tokenizer:
    return Tokenizer.from_files(corpora / "gpt2/vocab.json", corpora / "gpt2/merges.txt",
                                [EOT])


@pytest.fixture(scope="module")
def tiktoken_gpt2(corpora: Path, tmp_path_factory: pytest.TempPathFactory):
    tiktoken = pytest.importorskip("tiktoken")
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    # tiktoken's cache names each file by the sha1 of its URL and checks its sha256: the
    # published encoder.json is vocab.json, and vocab.bpe is merges.txt under its version line
    (cache / TIKTOKEN_ENCODER).write_bytes((corpora / "gpt2/vocab.json").read_bytes())
    (cache / TIKTOKEN_VOCAB_BPE).write_bytes(b"#version: 0.2\n"
                                             + (corpora / "gpt2/merges.txt").read_bytes())
    with pytest.MonkeyPatch.context() as patch:  # no network
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, corpora: Path) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "stories.txt"
    path.write_bytes((corpora / "tinystories_2MiB.txt").read_bytes()[:200_000])
    vocab, merges = train_bpe(path, 1000, [EOT])
    return Tokenizer(vocab, merges, [EOT])


@pytest.mark.parametrize("name", ["tinystories_2MiB.txt", "tinyshakespeare.txt"])
def test_gpt2_ids_equal_tiktoken_on_the_corpora(gpt2: Tokenizer, tiktoken_gpt2, corpora: Path,
                                                name: str) -> None:
    text = (corpora / name).read_text()
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")


def test_gpt2_ids_equal_tiktoken_on_tricky_text(gpt2: Tokenizer, tiktoken_gpt2) -> None:
    for text in TRICKY:
        assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all"), text


def test_trained_ids_equal_tiktoken_built_with_the_same_merges(trained: Tokenizer,
                                                               corpora: Path) -> None:
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {token: i for i, token in trained.vocab.items() if i != 0}
    enc = tiktoken.Encoding("trained", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={EOT: 0})
    text = (corpora / "tinyshakespeare.txt").read_text()[:100_000] + "".join(TRICKY)
    assert trained.encode(text) == enc.encode(text, allowed_special="all")


def test_round_trip(trained: Tokenizer, gpt2: Tokenizer, corpora: Path) -> None:
    text = (corpora / "tinyshakespeare.txt").read_text()[:50_000]
    for tok in (trained, gpt2):
        for sample in [text, *TRICKY]:
            assert tok.decode(tok.encode(sample)) == sample


def test_decode_replaces_invalid_utf8(trained: Tokenizer) -> None:
    byte = {token: i for i, token in trained.vocab.items()}
    assert trained.decode([byte[b"\xff"], byte[b"a"]]) == "\ufffda"
    assert trained.decode([byte["é".encode()[0:1]]]) == "\ufffd"  # half a character
    with pytest.raises(ValueError, match="not in the vocabulary"):
        trained.decode([10**6])


def test_special_tokens_longest_first_and_appended_when_missing(gpt2: Tokenizer) -> None:
    double = EOT + EOT
    tok = Tokenizer(gpt2.vocab, gpt2.merges, [EOT, double])
    ids = tok.encode(f"a{double}b{EOT}")
    assert ids[1] == 50257 and ids[3] == 50256  # the double token was appended after the last id
    assert tok.vocab_size == 50258
    assert tok.decode(ids) == f"a{double}b{EOT}"
    assert gpt2.encode("<|endoftext") == gpt2.encode("<|") + gpt2.encode("endoftext")


def test_encode_iterable_equals_encode_whole(trained: Tokenizer, gpt2: Tokenizer,
                                             corpora: Path) -> None:
    for name in ("tinyshakespeare.txt", "tinystories_2MiB.txt"):
        whole = gpt2.encode((corpora / name).read_text())
        with open(corpora / name) as lines:
            assert list(gpt2.encode_iterable(lines)) == whole


def test_encode_iterable_whatever_the_pieces(trained: Tokenizer, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    monkeypatch.setattr(tokenizer_module, "_BATCH_CHARS", 7)  # decide a cut after every few chars
    tok = Tokenizer(trained.vocab, trained.merges, [EOT, EOT + EOT])
    rng = random.Random(0)
    text = "".join(rng.choice(TRICKY + ["Once upon a time", "\n\n", "   ", "'ll", "'"])
                   for _ in range(400))
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(text)), 60))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert list(tok.encode_iterable(pieces)) == tok.encode(text)
    assert list(tok.encode_iterable(iter(text))) == tok.encode(text)  # one character at a time


def test_encode_file_in_parallel_equals_encode(gpt2: Tokenizer, corpora: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenizer_module, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(tokenizer_module, "CHUNK_BYTES", 50_000)
    path = corpora / "tinystories_2MiB.txt"
    done = []
    chunks = list(gpt2.encode_file(path, 1000, 400_000, workers=2, progress=done.append))
    assert len(chunks) > 4 and sum(done) == 399_000
    text = path.read_bytes()[1000:400_000].decode()
    assert [i for chunk in chunks for i in chunk] == gpt2.encode(text)


def test_encode_iterable_is_lazy(trained: Tokenizer) -> None:
    endless = itertools.cycle(["Once upon a time there was a cat.\n", EOT, "\n"])
    assert len(list(itertools.islice(trained.encode_iterable(endless), 10_000))) == 10_000


def test_ids_do_not_depend_on_what_the_cache_holds(trained: Tokenizer, corpora: Path) -> None:
    text = (corpora / "tinyshakespeare.txt").read_text()[:30_000] + "".join(TRICKY)
    whole = Tokenizer(trained.vocab, trained.merges, [EOT]).encode(text)
    tok = Tokenizer(trained.vocab, trained.merges, [EOT])  # pre-tokens one at a time, then warm
    parts = [part for segment in text.split(EOT) for part in [*PRETOKEN_RE.findall(segment), EOT]]
    assert [i for part in parts[:-1] for i in tok.encode(part)] == whole
    assert tok.encode(text) == whole


def test_special_tokens_survive_a_full_cache(trained: Tokenizer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    expected = Tokenizer(trained.vocab, trained.merges, [EOT]).encode(f"a cat{EOT}a dog{EOT}")
    monkeypatch.setattr(tokenizer_module, "_CACHE_LIMIT", 3)
    tok = Tokenizer(trained.vocab, trained.merges, [EOT])
    for _ in range(3):
        tok.encode(" ".join(TRICKY))  # fills the cache past its limit
        assert tok.encode(f"a cat{EOT}a dog{EOT}") == expected


def test_save_and_load_gpt2_format(trained: Tokenizer, gpt2: Tokenizer, tmp_path: Path) -> None:
    for tok in (trained, gpt2):
        tok.save(tmp_path)
        loaded = Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt", [EOT])
        assert loaded.vocab == tok.vocab and loaded.merges == tok.merges
    trained.save(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["Ġthe"] == trained.encode(" the")[0]  # bytes written through GPT-2's byte map
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and len(lines) == 1 + len(trained.merges)
    assert all(len(line.split(" ")) == 2 for line in lines[1:])


def test_other_tools_read_the_files(trained: Tokenizer, tmp_path: Path, corpora: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers", reason="in the bench dependency group")
    trained.save(tmp_path)
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(tmp_path / "vocab.json"),
                                                              str(tmp_path / "merges.txt")))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = (corpora / "tinystories_2MiB.txt").read_text()[:20_000].replace(EOT, "")
    assert hf.encode(text).ids == trained.encode(text)


def test_from_dir_uses_the_special_tokens_of_meta_json(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"special_tokens": [EOT]}))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.special_tokens == [EOT] and tok.encode(EOT) == [0]


def test_bad_files_name_the_file(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save(tmp_path)
    merges = tmp_path / "merges.txt"
    merges.write_text(merges.read_text() + "Ġzzzq Ġxxxq\n")
    with pytest.raises(ValueError, match=r"merges.txt: merge \d+ .* is not in the vocabulary"):
        Tokenizer.from_files(tmp_path / "vocab.json", merges)
    merges.write_text("#version: 0.2\nonlyone\n")
    with pytest.raises(ValueError, match="merges.txt line 2: expected two tokens"):
        Tokenizer.from_files(tmp_path / "vocab.json", merges)
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(ValueError, match="vocab.json: not a JSON vocabulary"):
        Tokenizer.from_files(tmp_path / "vocab.json", merges)
    with pytest.raises(ValueError, match="lacks 1 of the 256 single bytes"):
        Tokenizer({i: bytes([i]) for i in range(255)}, [])


@pytest.mark.parametrize(("moved_to", "why"), [(5000, "found id 5000"), (-3, "found id -3"),
                                               (7, "an id is given twice")])
def test_a_vocabulary_whose_ids_are_not_0_to_n_is_refused(trained: Tokenizer, tmp_path: Path,
                                                          moved_to: int, why: str) -> None:
    """Its size is the model's vocab_size: a gap would make ids the model cannot embed, and
    tokens sharing an id would decode wrongly."""
    trained.save(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    vocab[next(token for token, i in vocab.items() if i == 260)] = moved_to
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match=f"vocab.json: the ids of its {len(vocab)} tokens must be "
                                         f"0..{len(vocab) - 1}, each once \\({why}\\)"):
        Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
