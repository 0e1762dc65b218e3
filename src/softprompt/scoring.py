"""The small kernels every prompted model shares: placing soft tokens, autocasting to the backbone's compute
dtype, the one token log-likelihood (gather, mask, sum) that label words and targets are scored with, and the one
scorer of label words after a context (`label_word_scores`) that training, evaluation and the server share."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

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


@dataclass
class Recomputed:
    """What stands for a key/value cache on a backbone that keeps none (state-space or recurrent layers): the
    context rows' input vectors (R, C, d) and positions (R, C). A continuation runs again after them, whole."""

    inputs: torch.Tensor
    positions: torch.Tensor

    def batch_select_indices(self, index: torch.Tensor) -> None:
        """Keep the rows `index`, in place (as a transformers cache does)."""
        self.inputs, self.positions = self.inputs.index_select(0, index), self.positions.index_select(0, index)

    def after(self, backbone: Backbone, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
              rows: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (N, T, d) of new input vectors `embeds` (N, T, d) at `positions` (N, T) after the context
        rows `rows` (default all), run whole; `mask` (N, C + T) covers context and new columns."""
        inputs, before = (self.inputs, self.positions) if rows is None else (
            self.inputs.index_select(0, rows), self.positions.index_select(0, rows))
        hidden, _ = backbone.hidden_states(torch.cat([inputs, embeds.to(inputs.dtype)], 1), mask,
                                           torch.cat([before, positions], 1))
        return hidden[:, -embeds.shape[1]:]


def continue_context(backbone: Backbone, cache: Any, embeds: torch.Tensor, mask: torch.Tensor,
                     positions: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
    """Hidden states of `embeds` (N, T, d) after their contexts -- rows `rows` (default all) of a key/value `cache`
    or of a `Recomputed` context -- and the cache that now holds them (the same `Recomputed`, unchanged, for a
    backbone that keeps no keys/values). `mask` (N, C + T) covers the context's columns and the new ones."""
    if isinstance(cache, Recomputed):
        return cache.after(backbone, embeds, mask, positions, rows), cache
    if rows is not None:
        cache = backbone.new_cache([(key.index_select(0, rows), value.index_select(0, rows))
                                    for key, value in cache_layers(cache)])
    return backbone.hidden_states(embeds, mask, positions, past_key_values=cache, use_cache=True)


def label_word_scores(backbone: Backbone, last: torch.Tensor, words: Sequence[tuple[int, Sequence[int]]], *,
                      cache: Any = None, mask: torch.Tensor | None = None, next_position: torch.Tensor | None = None,
                      pad_id: int = 0, row_count: Callable[[int], int] | None = None) -> torch.Tensor:
    """The log-likelihood of label words after their rows' contexts: the one place a classification score is
    computed, for training, evaluation, the bank and the server alike.

    `last` (R, d): each context's final hidden state; `words`: (row, token ids) pairs, any number per row, each
    row's own words. A word's first token is read from `last`; a word of several tokens continues from its row's
    key/value `cache` (over `mask` (R, C) columns, the row's next position `next_position` (R, 1)): the cache is
    repeated per such word and only the words' leading tokens run after it, so a row's context runs once however
    many classes it has (on a backbone that keeps no keys/values, `cache` is a `Recomputed` context, run again
    before each such word). `row_count(n)`: how many rows to run for n (few shapes for a server; pad rows repeat the
    first and are dropped). Returns (len(words),).
    """
    device = last.device
    rows = torch.tensor([row for row, _ in words], device=device)
    firsts = torch.tensor([ids[0] for _, ids in words], device=device)
    used, where = torch.unique(rows, return_inverse=True)                     # project only the rows scored
    with backbone_autocast(backbone):
        logits = backbone.token_logits(last.index_select(0, used))
    first = torch.log_softmax(logits.float(), dim=-1)[where, firsts]          # (P,): every word's first token
    longer = [p for p, (_, ids) in enumerate(words) if len(ids) > 1]
    if not longer:
        return first
    k = max(len(words[p][1]) for p in longer) - 1
    extra = (row_count(len(longer)) if row_count else len(longer)) - len(longer)
    source = rows[torch.tensor(longer + [longer[0]] * extra, device=device)]
    inputs = torch.full((len(source), k), pad_id, dtype=torch.long)
    targets = torch.full((len(longer), k), -1, dtype=torch.long)
    for n, p in enumerate(longer):
        ids = words[p][1]
        inputs[n, :len(ids) - 1] = torch.tensor(ids[:-1])
        targets[n, :len(ids) - 1] = torch.tensor(ids[1:])
    word_mask = torch.cat([mask.index_select(0, source), mask.new_ones(len(source), k)], dim=1)
    positions = next_position.index_select(0, source) + torch.arange(k, device=device)
    with backbone_autocast(backbone):
        hidden, _ = continue_context(backbone, cache, backbone.embed(inputs.to(device)), word_mask, positions, source)
        logits = backbone.token_logits(hidden[:len(longer)])
    rest = token_log_likelihood(torch.log_softmax(logits.float(), dim=-1), targets.to(device))   # (L,)
    return first.index_add(0, torch.tensor(longer, device=device), rest)


def same_words_per_row(rows: int, word_ids: Sequence[Sequence[int]]) -> list[tuple[int, Sequence[int]]]:
    """`label_word_scores`' pairs when every one of `rows` rows scores the same words (one prompt's batch)."""
    return [(row, ids) for row in range(rows) for ids in word_ids]


def cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a transformers cache (or of a list of such pairs)."""
    return [(layer[0], layer[1]) for layer in cache]
