"""What a training step needs at least in memory, from the config alone (no torch, nothing
allocated): a floor to refuse a configuration that cannot fit before anything starts.

A floor, not an estimate: the step takes more (torch's allocator and workspaces, the attention's
own buffers, temporaries). Measured peaks run 1.5 to 2 times it (docs/benchmarks.md).
"""

from __future__ import annotations

from model.config import ModelConfig, TrainConfig

_OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "rmsprop": 1, "adagrad": 1}  # tensors per parameter


def parameter_count(model: ModelConfig) -> int:
    """Parameters of the Transformer LM: embedding, blocks, final norm and output projection."""
    d, norm = model.d_model, 0 if model.norm == "none" else model.d_model
    matrices, width = _ffn(model)
    return (2 * model.vocab_size * d + model.num_layers * (4 * d * d + matrices * d * width
                                                           + 2 * norm) + norm)


def _ffn(model: ModelConfig) -> tuple[int, int]:
    """The feed-forward's matrices and hidden width: SwiGLU's three of d_ff, or the SiLU MLP's
    two of 1.5·d_ff (as many parameters)."""
    d_ff = model.d_ff or 0
    return (3, d_ff) if model.ffn == "swiglu" else (2, round(1.5 * d_ff))


def step_memory_floor(config: TrainConfig, cuda: bool) -> int:
    """Bytes a training step holds at least: fp32 weights and gradients, the optimizer's state,
    and the activations autograd keeps for the batch's B·T tokens (bf16 under the fast path on
    CUDA; the T×T attention weights of each head too where the attention is not a fused kernel)."""
    model = config.model
    params = parameter_count(model)
    states = _OPTIMIZER_STATES.get(config.optimizer, 0)
    tokens = config.batch_size * model.context_length
    float_bytes = 2 if cuda and config.fast else 4
    kept = 4 if model.ffn == "swiglu" else 2  # hidden vectors: SwiGLU's two inputs, gate, product
    per_layer = 10 * model.d_model + kept * _ffn(model)[1]  # floats per token kept for backward
    if not config.fast:
        per_layer += 2 * model.num_heads * model.context_length  # scores and their softmax
    activations = tokens * (model.num_layers * per_layer * float_bytes + 2 * model.vocab_size * 4)
    return 4 * params * (2 + states) + activations
