"""The small kernels every prompted model shares: placing soft tokens, autocasting to the backbone's compute
dtype, and the one token log-likelihood (gather, mask, sum) that label words and targets are scored with."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .protocols import Backbone


def backbone_autocast(backbone: Backbone):
    """Autocast to the backbone's compute dtype: its weights' dtype when not fp32 (fp32 master prompts meet bf16
    weights there), or `backbone.autocast_dtype` when set (fp32 master weights trained in mixed precision)."""
    dtype = backbone.autocast_dtype or backbone.dtype
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(backbone.device.type, dtype=dtype)


def place_soft_tokens(tokens: torch.Tensor, soft_index: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Token embeddings (B, T, d) with `table[k]` at every position whose soft index is k (-1 = keep)."""
    virtual = table.to(tokens.dtype)[soft_index.clamp(min=0)]           # (B, T, d)
    return torch.where((soft_index >= 0).unsqueeze(-1), virtual, tokens)


def token_log_likelihood(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of target tokens: `log_probs` (..., K, V), `targets` (..., K) broadcastable to
    its leading dimensions, -1 where a slot is unused -> (...,). The one place label words and answers are read
    from a distribution over the vocabulary."""
    targets = targets.expand(*log_probs.shape[:-1])
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(targets < 0, 0.0).sum(dim=-1)


def text_positions(soft_index: torch.Tensor, attention_mask: torch.Tensor,
                   answer: torch.Tensor | None = None) -> torch.Tensor:
    """Each column's index among its row's real text tokens (B, T), -1 for soft tokens, padding and `answer`
    columns (B, T bool: generation targets). Counted from the row's first real column, so left padding and
    soft runs shift nothing: the positions DePT's low-rank offset is indexed by."""
    text = (attention_mask > 0) & (soft_index < 0)
    if answer is not None:
        text = text & ~answer
    return (text.long().cumsum(dim=1) - 1).masked_fill(~text, -1)
