"""Text generation: temperature and nucleus (top-p) sampling, greedy at temperature 0."""

from __future__ import annotations

import math
from typing import Any

import torch

from model.config import ConfigError
from model.layers import TransformerLM

EOS_TOKEN = "<|endoftext|>"


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None = None) -> int:
    """Pick the next token id from 1-D logits."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        keep[0] = True  # the likeliest token stays, even at top_p 0
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def _eos_id(tokenizer: Any, eos_token: str | None) -> int | None:
    return tokenizer.encode(eos_token)[0] if eos_token and eos_token in (
        tokenizer.special_tokens or []) else None


def prompt_ids(tokenizer: Any, prompt: str, eos_token: str | None = EOS_TOKEN) -> list[int]:
    """The ids generation starts from: the prompt's, or for an empty prompt the end-of-text
    token's (ConfigError when the tokenizer has none)."""
    eos_id = _eos_id(tokenizer, eos_token)
    ids = tokenizer.encode(prompt) or ([eos_id] if eos_id is not None else [])
    if not ids:
        raise ConfigError("prompt", "is empty, and the tokenizer has no end-of-text token to "
                          "start from")
    return ids


@torch.no_grad()
def generate(model: TransformerLM, tokenizer: Any, prompt: str, max_new_tokens: int = 64,
             temperature: float = 1.0, top_p: float = 1.0, eos_token: str | None = EOS_TOKEN,
             generator: torch.Generator | None = None) -> str:
    """Continue `prompt` (an empty one: from the end-of-text token) by up to `max_new_tokens`
    tokens, stopping at the end-of-text token; only ids the tokenizer can decode are drawn."""
    device = next(model.parameters()).device
    eos_id = _eos_id(tokenizer, eos_token)
    ids = prompt_ids(tokenizer, prompt, eos_token)
    undecodable = torch.ones(model.config.vocab_size, dtype=torch.bool, device=device)
    undecodable[[i for i in tokenizer.vocab if i < model.config.vocab_size]] = False  # padded vocab
    new: list[int] = []
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        context = (ids + new)[-model.config.context_length:]
        logits = model(torch.tensor([context], dtype=torch.long, device=device))[0, -1]
        logits = logits.masked_fill(undecodable, -math.inf)
        token = sample_next(logits, temperature, top_p, generator)
        if token == eos_id:
            break
        new.append(token)
    model.train(was_training)
    return tokenizer.decode(new)
