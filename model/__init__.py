"""The fixed trainer: a standalone PyTorch Transformer LM (torch, numpy and regex only)."""
