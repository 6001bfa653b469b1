"""The Transformer LM's modules: a pre-norm, RoPE, SwiGLU decoder with Llama-style parameter names.

Parameter names match other from-scratch CS336 implementations, so their checkpoints load here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import mup
from model.config import ModelConfig


class Linear(nn.Module):
    """y = x Wᵀ without bias; W (out, in) ~ truncated normal with σ² = 2/(in+out), cut at ±3σ."""

    def __init__(self, in_features: int, out_features: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device,
                                               dtype=dtype))
        std = math.sqrt(2.0 / (in_features + out_features))
        nn.init.trunc_normal_(self.weight, std=std, a=-3 * std, b=3 * std)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T


class Embedding(nn.Module):
    """Lookup table (num_embeddings, embedding_dim) ~ truncated normal σ=1, cut at ±3."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device,
                                               dtype=dtype))
        nn.init.trunc_normal_(self.weight, std=1.0, a=-3.0, b=3.0)

    def forward(self, token_ids: Tensor) -> Tensor:
        return self.weight[token_ids]


class RMSNorm(nn.Module):
    """x / RMS(x) · g, computed in float32 and returned in the input's dtype."""

    def __init__(self, d_model: int, eps: float = 1e-5, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        rms_inv = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x32 * rms_inv * self.weight).to(x.dtype)


class SwiGLU(nn.Module):
    """W2(SiLU(W1 x) ⊙ W3 x)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w1 = Linear(d_model, d_ff)
        self.w2 = Linear(d_ff, d_model)
        self.w3 = Linear(d_model, d_ff)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SiLUFeedForward(nn.Module):
    """W2(SiLU(W1 x)): the ungated ablation of SwiGLU."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w1 = Linear(d_model, d_ff)
        self.w2 = Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)))


class RotaryPositionalEmbedding(nn.Module):
    """Rotates each pair (x[2k], x[2k+1]) by the angle pos·θ^(−2k/d_k)."""

    def __init__(self, theta: float, d_k: int, max_seq_len: int,
                 device: torch.device | None = None):
        super().__init__()
        if d_k % 2:
            raise ValueError(f"RoPE needs an even d_k, got {d_k}")
        inv_freq = theta ** (-torch.arange(0, d_k, 2, dtype=torch.float64) / d_k)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
        # Non-persistent: derived from (theta, d_k, max_seq_len), so kept out of checkpoints.
        self.register_buffer("cos", angles.cos().float().to(device), persistent=False)
        self.register_buffer("sin", angles.sin().float().to(device), persistent=False)

    def forward(self, x: Tensor, token_positions: Tensor) -> Tensor:
        """x (..., seq, d_k); token_positions (..., seq), broadcast against x's leading dims."""
        cos, sin = self.cos[token_positions], self.sin[token_positions]
        x32 = x.float()
        even, odd = x32[..., 0::2], x32[..., 1::2]
        rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return rotated.flatten(-2).to(x.dtype)


def softmax(x: Tensor, dim: int) -> Tensor:
    """Softmax along `dim`, shifted by the max so that huge logits do not overflow."""
    exp = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return exp / exp.sum(dim=dim, keepdim=True)


def scaled_dot_product_attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None,
                                 divisor: float | None = None) -> Tensor:
    """softmax(Q Kᵀ/√d_k) V, or Q Kᵀ/`divisor`; `mask` (bool, broadcastable to (..., n, m)) is
    True where allowed."""
    scores = Q @ K.transpose(-2, -1) / (divisor or math.sqrt(Q.shape[-1]))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # float32 softmax: under bf16 autocast the scores arrive in bf16.
    return softmax(scores.float(), dim=-1).to(V.dtype) @ V


class MultiHeadSelfAttention(nn.Module):
    """Causal multi-head self-attention with RoPE on q and k; `fast` uses PyTorch's fused SDPA."""

    def __init__(self, d_model: int, num_heads: int, rope: RotaryPositionalEmbedding | None = None,
                 fast: bool = False, divisor: float | None = None):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}")
        self.num_heads = num_heads
        self.rope = rope
        self.fast = fast
        self.divisor = divisor  # of the scores; None: √d_head
        self.q_proj = Linear(d_model, d_model)
        self.k_proj = Linear(d_model, d_model)
        self.v_proj = Linear(d_model, d_model)
        self.output_proj = Linear(d_model, d_model)

    def forward(self, x: Tensor, token_positions: Tensor | None = None) -> Tensor:
        """x (..., seq, d_model); token_positions (..., seq), default 0..seq-1."""
        seq = x.shape[-2]
        # (..., seq, d_model) -> (..., heads, seq, d_k)
        q, k, v = (proj(x).unflatten(-1, (self.num_heads, -1)).transpose(-3, -2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.rope is not None:
            if token_positions is None:
                token_positions = torch.arange(seq, device=x.device)
            positions = token_positions.unsqueeze(-2)  # broadcast over the head dim
            q, k = self.rope(q, positions), self.rope(k, positions)
        if self.fast:
            scale = None if self.divisor is None else 1.0 / self.divisor
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        else:
            causal = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
            out = scaled_dot_product_attention(q, k, v, causal, self.divisor)
        return self.output_proj(out.transpose(-3, -2).flatten(-2))


class TransformerBlock(nn.Module):
    """Attention then feed-forward, each a residual sublayer; norm is "pre", "post" or "none".

    `d_ff` is the hidden width of the chosen feed-forward ("swiglu" or "silu").
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int,
                 rope: RotaryPositionalEmbedding | None = None, norm: str = "pre",
                 ffn: str = "swiglu", dropout: float = 0.0, fast: bool = False,
                 attention_divisor: float | None = None):
        super().__init__()
        if norm not in ("pre", "post", "none"):
            raise ValueError(f"norm must be pre, post or none, got {norm!r}")
        if ffn not in ("swiglu", "silu"):
            raise ValueError(f"ffn must be swiglu or silu, got {ffn!r}")
        self.norm = norm
        if norm != "none":
            self.ln1 = RMSNorm(d_model)
        self.attn = MultiHeadSelfAttention(d_model, num_heads, rope, fast, attention_divisor)
        if norm != "none":
            self.ln2 = RMSNorm(d_model)
        self.ffn = SwiGLU(d_model, d_ff) if ffn == "swiglu" else SiLUFeedForward(d_model, d_ff)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm == "post":
            x = self.ln1(x + self.drop(self.attn(x)))
            return self.ln2(x + self.drop(self.ffn(x)))
        pre = self.norm == "pre"
        x = x + self.drop(self.attn(self.ln1(x) if pre else x))
        return x + self.drop(self.ffn(self.ln2(x) if pre else x))


class TransformerLM(nn.Module):
    """Decoder-only LM: token ids (batch, seq) -> next-token logits (batch, seq, vocab)."""

    def __init__(self, config: ModelConfig, dropout: float = 0.0, fast: bool = False):
        super().__init__()
        config.validate()
        self.config = config
        rope = None
        if config.positions == "rope":
            rope = RotaryPositionalEmbedding(config.rope_theta, config.d_model // config.num_heads,
                                             config.context_length)
        # The SiLU MLP has two matrices to SwiGLU's three: 1.5x wider keeps the parameter count.
        d_ff = config.d_ff if config.ffn == "swiglu" else round(1.5 * config.d_ff)
        self.token_embeddings = Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TransformerBlock(config.d_model, config.num_heads, d_ff, rope, config.norm, config.ffn,
                             dropout, fast, mup.attention_divisor(config))
            for _ in range(config.num_layers))
        # A post-norm stack already ends in a norm; "none" has none at all.
        self.ln_final = RMSNorm(config.d_model) if config.norm == "pre" else None
        self.lm_head = Linear(config.d_model, config.vocab_size)
        self.output_multiplier = mup.output_multiplier(config)
        if config.parametrization == "mup" and config.mup_norm_gains == "frozen":
            for param in self.parameters():
                if param.ndim == 1:  # the RMSNorm gains, at 1
                    param.requires_grad_(False)

    def forward(self, token_ids: Tensor) -> Tensor:
        x = self.drop(self.token_embeddings(token_ids))
        for layer in self.layers:
            x = layer(x)
        if self.ln_final is not None:
            x = self.ln_final(x)
        logits = self.lm_head(x)
        return logits if self.output_multiplier == 1.0 else logits * self.output_multiplier

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The matrices whose input is the width (attention's and the feed-forward's): μP scales
        their step size and weight decay."""
        return [p for p in self.layers.parameters() if p.ndim >= 2]

    def num_params(self) -> int:
        """Number of parameters (embeddings and lm_head included)."""
        return sum(p.numel() for p in self.parameters())
