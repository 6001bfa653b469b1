"""The model's modules: initialisation, formulas, RoPE, attention, and the whole LM's contracts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.config import ModelConfig
from model.layers import (
    Embedding,
    Linear,
    MultiHeadSelfAttention,
    RMSNorm,
    RotaryPositionalEmbedding,
    SiLUFeedForward,
    SwiGLU,
    TransformerBlock,
    TransformerLM,
    scaled_dot_product_attention,
    softmax,
)

TRUNC3_STD = 0.9866  # std of a standard normal truncated at ±3


def tiny_config(**overrides) -> ModelConfig:
    spec = {"vocab_size": 50, "context_length": 16, "d_model": 32, "num_layers": 2,
            "num_heads": 4, "d_ff": 64}
    return ModelConfig(**{**spec, **overrides})


def tokens(batch: int = 2, seq: int = 16, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# --- Linear, Embedding, RMSNorm, feed-forwards ---------------------------------------------------

def test_linear_init_statistics_and_bounds():
    torch.manual_seed(0)
    layer = Linear(256, 512)
    sigma = math.sqrt(2 / (256 + 512))
    assert layer.weight.shape == (512, 256)
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    assert layer.weight.abs().max() <= 3 * sigma
    assert layer.weight.std().item() == pytest.approx(TRUNC3_STD * sigma, rel=0.02)
    assert abs(layer.weight.mean().item()) < 0.02 * sigma


def test_linear_forward_is_x_wt():
    layer = Linear(8, 5)
    x = torch.randn(3, 4, 8)
    assert torch.allclose(layer(x), torch.einsum("bsi,oi->bso", x, layer.weight), atol=1e-6)


def test_linear_respects_dtype():
    assert Linear(4, 3, dtype=torch.bfloat16).weight.dtype == torch.bfloat16


def test_embedding_init_and_lookup():
    torch.manual_seed(0)
    emb = Embedding(1000, 64)
    assert emb.weight.shape == (1000, 64)
    assert emb.weight.abs().max() <= 3.0
    assert emb.weight.std().item() == pytest.approx(TRUNC3_STD, rel=0.02)
    ids = torch.tensor([[0, 999, 5], [5, 5, 1]])
    out = emb(ids)
    assert out.shape == (2, 3, 64)
    assert torch.equal(out[0, 2], emb.weight[5]) and torch.equal(out[1, 0], emb.weight[5])
    assert torch.equal(out[0, 1], emb.weight[999])


def test_rmsnorm_formula_and_gain():
    norm = RMSNorm(16, eps=1e-5)
    assert torch.equal(norm.weight, torch.ones(16))
    with torch.no_grad():
        norm.weight.copy_(torch.arange(16.0))
    x = torch.randn(2, 3, 16)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * torch.arange(16.0)
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_rmsnorm_computes_in_float32_and_keeps_dtype():
    norm = RMSNorm(8)
    # 1000² overflows float16, so a float16 computation would give inf/0 here.
    x = torch.full((2, 8), 1000.0, dtype=torch.float16)
    out = norm(x)
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), torch.ones(2, 8), atol=1e-3)
    xb = torch.randn(4, 8).to(torch.bfloat16)
    x32 = xb.float()
    expected = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    assert norm(xb).dtype == torch.bfloat16
    assert torch.equal(norm(xb), expected)


def hand_silu(a: torch.Tensor) -> torch.Tensor:
    return a / (1 + torch.exp(-a))


def test_swiglu_matches_hand_computation():
    ffn = SwiGLU(8, 24)
    assert ffn.w1.weight.shape == (24, 8) and ffn.w3.weight.shape == (24, 8)
    assert ffn.w2.weight.shape == (8, 24)
    x = torch.randn(3, 8)
    w1, w2, w3 = ffn.w1.weight, ffn.w2.weight, ffn.w3.weight
    expected = (hand_silu(x @ w1.T) * (x @ w3.T)) @ w2.T
    assert torch.allclose(ffn(x), expected, atol=1e-6)


def test_silu_feed_forward_matches_hand_computation():
    ffn = SiLUFeedForward(8, 36)
    assert sorted(k for k in ffn.state_dict()) == ["w1.weight", "w2.weight"]
    x = torch.randn(3, 8)
    expected = hand_silu(x @ ffn.w1.weight.T) @ ffn.w2.weight.T
    assert torch.allclose(ffn(x), expected, atol=1e-6)


# --- RoPE -----------------------------------------------------------------------------------------

def rope_reference(x: torch.Tensor, positions: list[int], theta: float) -> torch.Tensor:
    """Per-position, per-pair rotation written out the slow way; x is (seq, d_k)."""
    out = torch.empty_like(x, dtype=torch.float64)
    d_k = x.shape[-1]
    for i, pos in enumerate(positions):
        for k in range(d_k // 2):
            angle = pos * theta ** (-2 * k / d_k)
            a, b = x[i, 2 * k].item(), x[i, 2 * k + 1].item()
            out[i, 2 * k] = a * math.cos(angle) - b * math.sin(angle)
            out[i, 2 * k + 1] = a * math.sin(angle) + b * math.cos(angle)
    return out


def test_rope_matches_per_pair_reference():
    rope = RotaryPositionalEmbedding(10000.0, 8, 64)
    x = torch.randn(5, 8)
    positions = [0, 1, 7, 30, 63]
    out = rope(x, torch.tensor(positions))
    assert torch.allclose(out.double(), rope_reference(x, positions, 10000.0), atol=1e-5)


def test_rope_preserves_norms_and_dtype():
    rope = RotaryPositionalEmbedding(500.0, 16, 32)
    x = torch.randn(2, 3, 32, 16)
    out = rope(x, torch.arange(32))
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert rope(x.to(torch.bfloat16), torch.arange(32)).dtype == torch.bfloat16


def test_rope_dot_product_depends_only_on_offset():
    rope = RotaryPositionalEmbedding(10000.0, 16, 128)
    q, k = torch.randn(16), torch.randn(16)

    def score(m: int, n: int) -> float:
        rq = rope(q[None], torch.tensor([m]))[0]
        rk = rope(k[None], torch.tensor([n]))[0]
        return (rq @ rk).item()

    for m, n in [(5, 2), (10, 10), (3, 40)]:
        for shift in (1, 17, 60):
            assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-4)


def test_rope_token_positions_broadcast_over_batch_dims():
    rope = RotaryPositionalEmbedding(10000.0, 8, 32)
    x = torch.randn(3, 4, 10, 8)  # (batch, heads, seq, d_k)
    shared = rope(x, torch.arange(10))
    per_batch = rope(x, torch.arange(10).expand(3, 1, 10))
    assert torch.equal(shared, per_batch)
    offsets = torch.stack([torch.arange(10) + s for s in (0, 5, 20)])[:, None, :]  # (3, 1, 10)
    out = rope(x, offsets)
    for b, s in enumerate((0, 5, 20)):
        assert torch.allclose(out[b], rope(x[b], torch.arange(10) + s), atol=1e-6)


def test_rope_buffers_are_not_persistent():
    rope = RotaryPositionalEmbedding(10000.0, 8, 32)
    assert rope.state_dict() == {}
    with pytest.raises(ValueError):
        RotaryPositionalEmbedding(10000.0, 7, 32)


# --- softmax and attention ------------------------------------------------------------------------

def test_softmax_matches_torch_and_survives_huge_values():
    x = torch.randn(4, 7, 5)
    for dim in (0, 1, -1):
        assert torch.allclose(softmax(x, dim), torch.softmax(x, dim), atol=1e-6)
    huge = torch.tensor([[1e4, 1e4 + 1.0, 1e4 - 2.0], [1e30, 1e30, 1e30], [-1e4, 0.0, 1e4]])
    out = softmax(huge, dim=-1)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.softmax(huge, dim=-1), atol=1e-6)
    assert torch.allclose(out[1], torch.full((3,), 1 / 3))


def reference_attention(Q, K, V, mask):
    scores = Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ V


def test_sdpa_with_mask_matches_reference():
    torch.manual_seed(0)
    Q, K, V = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 6)
    mask = torch.rand(5, 7) > 0.4
    mask[:, 0] = True  # every query can attend somewhere
    out = scaled_dot_product_attention(Q, K, V, mask)
    assert out.shape == (2, 3, 5, 6)
    assert torch.allclose(out, reference_attention(Q, K, V, mask), atol=1e-6)
    assert torch.allclose(out, F.scaled_dot_product_attention(Q, K, V, attn_mask=mask), atol=1e-5)
    unmasked = scaled_dot_product_attention(Q, K, V)
    assert torch.allclose(unmasked, F.scaled_dot_product_attention(Q, K, V), atol=1e-5)
    # Changing a value that nobody may attend to leaves the output unchanged.
    mask[:, 3] = False
    V2 = V.clone()
    V2[..., 3, :] += 100.0
    assert torch.allclose(scaled_dot_product_attention(Q, K, V, mask),
                          scaled_dot_product_attention(Q, K, V2, mask), atol=1e-6)


@pytest.mark.parametrize("fast", [False, True])
def test_attention_is_causal(fast):
    torch.manual_seed(0)
    rope = RotaryPositionalEmbedding(10000.0, 8, 16)
    attn = MultiHeadSelfAttention(32, 4, rope, fast=fast)
    x = torch.randn(2, 12, 32)
    t = 6
    changed = x.clone()
    changed[:, t + 1:] = torch.randn(2, 12 - t - 1, 32)
    before, after = attn(x), attn(changed)
    assert torch.allclose(before[:, :t + 1], after[:, :t + 1], atol=1e-6)
    assert not torch.allclose(before[:, t + 1:], after[:, t + 1:], atol=1e-3)


def test_attention_fast_and_plain_agree_and_positions_default():
    torch.manual_seed(0)
    rope = RotaryPositionalEmbedding(10000.0, 8, 32)
    plain = MultiHeadSelfAttention(32, 4, rope)
    fast = MultiHeadSelfAttention(32, 4, rope, fast=True)
    fast.load_state_dict(plain.state_dict())
    assert sorted(plain.state_dict()) == ["k_proj.weight", "output_proj.weight", "q_proj.weight",
                                          "v_proj.weight"]
    x = torch.randn(2, 10, 32)
    assert torch.allclose(plain(x), fast(x), atol=1e-5)
    assert torch.allclose(plain(x), plain(x, torch.arange(10).expand(2, 10)), atol=1e-6)
    # Shifting every position by the same amount changes nothing (RoPE is relative).
    assert torch.allclose(plain(x), plain(x, torch.arange(10) + 7), atol=1e-5)


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError):
        MultiHeadSelfAttention(30, 4)


# --- TransformerBlock and TransformerLM ----------------------------------------------------------

def expected_keys(config: ModelConfig) -> set[str]:
    keys = {"token_embeddings.weight", "lm_head.weight"}
    if config.norm == "pre":
        keys.add("ln_final.weight")
    for i in range(config.num_layers):
        keys |= {f"layers.{i}.attn.{p}.weight"
                 for p in ("q_proj", "k_proj", "v_proj", "output_proj")}
        keys |= {f"layers.{i}.ffn.{w}.weight"
                 for w in (("w1", "w2", "w3") if config.ffn == "swiglu" else ("w1", "w2"))}
        if config.norm != "none":
            keys |= {f"layers.{i}.ln1.weight", f"layers.{i}.ln2.weight"}
    return keys


def test_state_dict_keys_default_model():
    config = tiny_config()
    keys = set(TransformerLM(config).state_dict())
    assert keys == expected_keys(config)
    assert "ln_final.weight" in keys and "layers.1.ffn.w3.weight" in keys
    assert not any("cos" in k or "sin" in k for k in keys)


@pytest.mark.parametrize("norm", ["post", "none"])
def test_state_dict_keys_without_final_norm(norm):
    config = tiny_config(norm=norm)
    keys = set(TransformerLM(config).state_dict())
    assert keys == expected_keys(config)
    assert "ln_final.weight" not in keys
    assert any(".ln1." in k for k in keys) == (norm == "post")


def test_num_params_counts_every_parameter():
    config = tiny_config()
    model = TransformerLM(config)
    d, v, f, layers = 32, 50, 64, 2
    assert model.num_params() == 2 * v * d + layers * (4 * d * d + 3 * d * f + 2 * d) + d
    assert model.num_params() == sum(t.numel() for t in model.state_dict().values())


def test_silu_parameter_count_matches_swiglu():
    swiglu = TransformerLM(tiny_config(d_model=64, d_ff=192)).num_params()
    silu = TransformerLM(tiny_config(d_model=64, d_ff=192, ffn="silu")).num_params()
    assert silu == pytest.approx(swiglu, rel=0.01)
    assert TransformerLM(tiny_config(ffn="silu")).layers[0].ffn.w1.weight.shape == (96, 32)


def test_forward_shape_dtype_and_config():
    config = tiny_config()
    model = TransformerLM(config)
    assert model.config is config
    logits = model(tokens())
    assert logits.shape == (2, 16, 50) and logits.dtype == torch.float32
    assert model(tokens(seq=5)).shape == (2, 5, 50)


@pytest.mark.parametrize("overrides", [{}, {"positions": "none"}, {"norm": "post"}])
def test_lm_is_causal(overrides):
    torch.manual_seed(0)
    model = TransformerLM(tiny_config(**overrides)).eval()
    x = tokens()
    changed = x.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 50
    before, after = model(x), model(changed)
    assert torch.allclose(before[:, :9], after[:, :9], atol=1e-5)
    assert not torch.allclose(before[:, 9:], after[:, 9:], atol=1e-3)


@pytest.mark.parametrize("overrides", [{}, {"norm": "post"}, {"ffn": "silu"}])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fast_and_plain_paths_agree(overrides, dropout):
    config = tiny_config(**overrides)
    torch.manual_seed(0)
    plain = TransformerLM(config, dropout=dropout)
    fast = TransformerLM(config, dropout=dropout, fast=True)
    fast.load_state_dict(plain.state_dict())
    x = tokens()
    torch.manual_seed(123)
    out_plain = plain(x)
    torch.manual_seed(123)
    out_fast = fast(x)
    assert torch.allclose(out_plain, out_fast, atol=1e-5)
    if dropout:
        torch.manual_seed(124)
        assert not torch.allclose(out_plain, fast(x), atol=1e-3)  # dropout really is on


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = TransformerLM(tiny_config(), dropout=0.5).eval()
    x = tokens()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_loading_state_dict_reproduces_outputs():
    config = tiny_config()
    torch.manual_seed(0)
    model = TransformerLM(config)
    torch.manual_seed(1)
    fresh = TransformerLM(config)
    x = tokens()
    assert not torch.allclose(model(x), fresh(x))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(model(x), fresh(x))


@pytest.mark.parametrize("overrides", [
    {}, {"norm": "post"}, {"norm": "none"}, {"positions": "none"}, {"ffn": "silu"},
    {"norm": "none", "positions": "none", "ffn": "silu"},
])
def test_ablations_forward_and_backward(overrides):
    torch.manual_seed(0)
    model = TransformerLM(tiny_config(**overrides), dropout=0.1)
    logits = model(tokens())
    assert logits.shape == (2, 16, 50)
    F.cross_entropy(logits.flatten(0, 1), tokens(seed=1).flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_block_rejects_unknown_choices():
    with pytest.raises(ValueError):
        TransformerBlock(16, 2, 32, norm="layer")
    with pytest.raises(ValueError):
        TransformerBlock(16, 2, 32, ffn="gelu")


@pytest.mark.parametrize("fast", [False, True])
def test_bf16_autocast(fast):
    torch.manual_seed(0)
    model = TransformerLM(tiny_config(), fast=fast)
    reference = model(tokens())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens())
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits.float(), reference, atol=0.15)
