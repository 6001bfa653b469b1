"""Text generation: greedy at temperature 0, nucleus sampling, end-of-text stops, long prompts."""

from __future__ import annotations

import torch

from model.config import ModelConfig
from model.generate import EOS_TOKEN, generate, sample_next
from model.layers import TransformerLM
from model.tokenizer import Tokenizer


def byte_tokenizer() -> Tokenizer:
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], [EOS_TOKEN])


def tiny_model(seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(ModelConfig(vocab_size=257, context_length=16, d_model=32, num_layers=1,
                                     num_heads=4))


def test_greedy_is_deterministic_and_extends_the_prompt() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    first = generate(model, tok, "hello", max_new_tokens=12, temperature=0)
    assert first == generate(model, tok, "hello", max_new_tokens=12, temperature=0)
    assert 0 < len(first) <= 12  # a byte tokenizer decodes each new id to at most one character


def test_tiny_top_p_keeps_only_the_most_likely_token() -> None:
    logits = torch.tensor([0.1, 3.0, 0.2, 2.9])
    gen = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, 1e-6, gen) for _ in range(50)} == {1}
    assert sample_next(logits, 0.0, 1.0) == 1
    assert len({sample_next(logits, 1.0, 1.0, gen) for _ in range(200)}) == 4


def test_seeded_sampling_repeats() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    runs = [generate(model, tok, "a", 10, temperature=1.0, top_p=0.9,
                     generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert runs[0] == runs[1]


def test_stops_at_end_of_text() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    eos = tok.encode(EOS_TOKEN)[0]
    model.lm_head.register_forward_hook(lambda _m, _i, out: out.index_fill(-1, torch.tensor([eos]),
                                                                           1e4))
    assert generate(model, tok, "story", max_new_tokens=10, temperature=0) == ""


def test_prompt_longer_than_the_context_is_cropped() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    text = generate(model, tok, "x" * 100, max_new_tokens=5, temperature=0)
    assert 0 < len(text) <= 5


def test_a_model_vocab_larger_than_the_tokenizer_draws_only_decodable_ids() -> None:
    """A padded model vocab (vocab_size above the tokenizer's) never samples an id the tokenizer
    cannot decode: such an id ended the trial at its first sample."""
    torch.manual_seed(0)
    model, tok = TransformerLM(ModelConfig(vocab_size=320, context_length=16, d_model=32,
                                           num_layers=1, num_heads=4)), byte_tokenizer()
    model.lm_head.register_forward_hook(lambda _m, _i, out: out.index_fill(
        -1, torch.arange(257, 320), 1e4))  # the padding ids are by far the likeliest
    gen = torch.Generator().manual_seed(0)
    for temperature in (1.0, 0.0):  # a padding id would raise: the tokenizer cannot decode it
        assert generate(model, tok, "a", 20, temperature=temperature, generator=gen)


def test_an_empty_prompt_starts_from_end_of_text() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    assert generate(model, tok, "", 8, temperature=0) == generate(model, tok, EOS_TOKEN, 8,
                                                                  temperature=0)


def test_top_p_zero_keeps_the_likeliest_token() -> None:
    logits = torch.tensor([0.1, 3.0, 0.2])
    assert sample_next(logits, 1.0, 0.0, torch.Generator().manual_seed(0)) == 1
