"""The soft prompt: `num_virtual_tokens` trainable vectors in the backbone's embedding space (fp32 master)."""

from __future__ import annotations

import math
from enum import Enum
from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError

VOCAB_SAMPLE_TOP = 5000  # sample `vocab` inits from the 5,000 lowest ids (BPE merge order ~ token frequency)


class PromptInit(str, Enum):
    RANDOM = "random"   # uniform, scaled to the vocabulary embeddings' standard deviation
    VOCAB = "vocab"     # embeddings of real, frequent tokens
    TEXT = "text"       # embeddings of --init-text, repeated or truncated to length
    LABELS = "labels"   # label-word embeddings first, the rest sampled from the vocabulary


class InputVectors:
    """The sizes of a prompt whose `embeddings` (n, d) all sit in the input sequence."""

    @property
    def num_virtual_tokens(self) -> int:
        return self.embeddings.shape[0]

    num_input_tokens = num_virtual_tokens  # every virtual token sits in the input sequence

    @property
    def hidden_size(self) -> int:
        return self.embeddings.shape[1]


class SoftPrompt(InputVectors, nn.Module):
    """`num_virtual_tokens x hidden_size` trainable embeddings, kept in fp32 whatever the backbone's dtype.

    Examples:
        >>> prompt = SoftPrompt(torch.zeros(20, 576))
        >>> prompt().shape
        torch.Size([20, 576])
    """

    method = "prompt"

    def __init__(self, embeddings: torch.Tensor) -> None:
        super().__init__()
        if embeddings.dim() != 2:
            raise ConfigError(f"prompt embeddings must be [num_virtual_tokens, hidden_size], got {tuple(embeddings.shape)}")
        self.embeddings = nn.Parameter(embeddings.detach().to(torch.float32).clone())


    def forward(self) -> torch.Tensor:
        return self.embeddings  # (n, d)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"prompt_embeddings": self.embeddings.detach().to("cpu", torch.float32).contiguous()}


def _special_ids(tokenizer) -> set[int]:
    return set(getattr(tokenizer, "all_special_ids", []) or [])


def _vocab_ids(tokenizer, vocab_size: int) -> torch.Tensor:
    special = _special_ids(tokenizer)
    ids = [i for i in range(min(VOCAB_SAMPLE_TOP, vocab_size)) if i not in special]
    # WordPiece vocabularies open with ~1,000 never-trained placeholders ([unused0], ...): not real tokens.
    pieces = tokenizer.convert_ids_to_tokens(ids) if hasattr(tokenizer, "convert_ids_to_tokens") else None
    if pieces is not None:
        ids = [i for i, piece in zip(ids, pieces) if not str(piece).startswith(("[unused", "<unused"))]
    return torch.tensor(ids, dtype=torch.long)


def initial_embeddings(init: PromptInit | str, num_virtual_tokens: int, embedding_matrix: torch.Tensor,
                       tokenizer, *, text: str | None = None, label_word_ids: Sequence[Sequence[int]] = (),
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Initial prompt vectors (n, d) in fp32 by one of the `PromptInit` strategies.

    `label_word_ids` holds, per label word, its token ids; `labels` uses them in order (each word's tokens),
    then fills the rest from the vocabulary.
    """
    init = PromptInit(init)
    weights = embedding_matrix.detach().to(torch.float32)
    vocab_size = weights.shape[0]
    if init is PromptInit.RANDOM:
        bound = math.sqrt(3.0) * float(weights.std())  # same variance as the real embeddings
        return (torch.rand(num_virtual_tokens, weights.shape[1], generator=generator) * 2 - 1) * bound

    candidates = _vocab_ids(tokenizer, vocab_size)
    sampled = candidates[torch.randint(len(candidates), (num_virtual_tokens,), generator=generator)]
    if init is PromptInit.VOCAB:
        ids = sampled
    elif init is PromptInit.TEXT:
        if not text or not text.strip():
            raise ConfigError("--init text needs --init-text 'some words'")
        tokens = tokenizer(text, add_special_tokens=False).input_ids
        if not tokens:
            raise ConfigError(f"--init-text '{text}' encodes to no tokens")
        ids = torch.tensor((tokens * math.ceil(num_virtual_tokens / len(tokens)))[:num_virtual_tokens])
    else:  # LABELS
        words = [tok for word in label_word_ids for tok in word]
        if not words:
            raise ConfigError("--init labels needs a classification task with label words; use --init vocab")
        ids = sampled.clone()
        take = min(len(words), num_virtual_tokens)
        ids[:take] = torch.tensor(words[:take])
    return weights[ids].clone()
