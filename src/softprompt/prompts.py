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


class SoftPrompt(nn.Module):
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

    @property
    def num_virtual_tokens(self) -> int:
        return self.embeddings.shape[0]

    num_input_tokens = num_virtual_tokens  # every virtual token sits in the input sequence

    @property
    def hidden_size(self) -> int:
        return self.embeddings.shape[1]

    def forward(self) -> torch.Tensor:
        return self.embeddings  # (n, d)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"prompt_embeddings": self.embeddings.detach().to("cpu", torch.float32).contiguous()}


class PromptMethod(str, Enum):
    PROMPT = "prompt"   # soft tokens in the input sequence
    DEEP = "deep"       # key/value prefixes at every layer
    MULTITASK = "multitask"  # a shared prompt + per-task low-rank factors (multitask.py); stage-1 files only


def prompt_from_tensors(method: str, tensors: dict[str, torch.Tensor], hidden_size: int) -> "SoftPrompt | DeepPrompt":
    """Rebuild a prompt module from a prompt file's tensors."""
    if PromptMethod(method) is PromptMethod.MULTITASK:
        raise ConfigError("a multitask shared-prompt file holds no single task's prompt: use a task's prompt file "
                          "written beside it, or adapt it to a new task with `softprompt train --init-from`")
    if PromptMethod(method) is PromptMethod.DEEP:
        return DeepPrompt(tensors["prefix_keys"], tensors["prefix_values"], hidden_size)
    return SoftPrompt(tensors["prompt_embeddings"])


TENSOR_NAMES = {PromptMethod.PROMPT: ("prompt_embeddings",), PromptMethod.DEEP: ("prefix_keys", "prefix_values"),
                PromptMethod.MULTITASK: ("shared_prompt",)}


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


class DeepPrompt(nn.Module):
    """Deep prompt tuning (prefix tuning / P-tuning v2): trainable keys and values prepended at every layer.

    `keys` and `values` are `[num_layers, num_virtual_tokens, kv_heads, head_dim]` (fp32 master). With
    `reparam_hidden > 0` they are trained through a small MLP, as prefix tuning does for stability: prefixes =
    initial prefixes + MLP(seed), the MLP's last layer starting at zero; `folded()` turns the result into plain
    prefixes (what a prompt file stores). The input sequence itself gets no soft tokens.

    Examples:
        >>> deep = DeepPrompt(torch.zeros(2, 5, 1, 4), torch.zeros(2, 5, 1, 4), hidden_size=8)
        >>> [tuple(k.shape) for k, _ in deep.layer_prefix()]
        [(1, 1, 5, 4), (1, 1, 5, 4)]
    """

    method = "deep"
    num_input_tokens = 0

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, hidden_size: int, *, reparam_hidden: int = 0) -> None:
        super().__init__()
        if keys.dim() != 4 or keys.shape != values.shape:
            raise ConfigError(f"deep prompt keys/values must both be [layers, tokens, kv_heads, head_dim], got "
                              f"{tuple(keys.shape)} and {tuple(values.shape)}")
        self.hidden_size = hidden_size
        self.reparam_hidden = reparam_hidden
        keys, values = keys.detach().to(torch.float32).clone(), values.detach().to(torch.float32).clone()
        if reparam_hidden:
            layers, count, heads, dim = keys.shape
            self.register_buffer("base", torch.stack([keys, values]))                 # (2, L, n, h, hd)
            self.seed = nn.Parameter(torch.randn(count, reparam_hidden, device=keys.device) * 0.02)
            self.mlp = nn.Sequential(nn.Linear(reparam_hidden, reparam_hidden), nn.Tanh(),
                                     nn.Linear(reparam_hidden, 2 * layers * heads * dim))
            self.mlp.to(keys.device)
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)
        else:
            self.keys = nn.Parameter(keys)
            self.values = nn.Parameter(values)

    @property
    def num_virtual_tokens(self) -> int:
        return self._pair()[0].shape[1]

    def _pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.reparam_hidden:
            return self.keys, self.values
        two, layers, count, heads, dim = self.base.shape
        delta = self.mlp(self.seed).view(count, 2, layers, heads, dim).permute(1, 2, 0, 3, 4)
        both = self.base + delta
        return both[0], both[1]

    def layer_prefix(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values), each (1, kv_heads, n, head_dim): a key/value cache of batch 1."""
        keys, values = self._pair()
        keys, values = keys.transpose(1, 2), values.transpose(1, 2)                 # (L, h, n, hd)
        return [(keys[i][None], values[i][None]) for i in range(keys.shape[0])]

    def forward(self) -> torch.Tensor:
        return self._pair()[0].new_zeros(0, self.hidden_size)  # no input-level soft tokens

    def folded(self) -> "DeepPrompt":
        """Plain prefixes with the MLP applied (the same prefixes, without the MLP's parameters)."""
        with torch.no_grad():
            keys, values = self._pair()
        return DeepPrompt(keys, values, self.hidden_size)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        keys, values = self.folded()._pair()
        return {"prefix_keys": keys.detach().cpu().contiguous(), "prefix_values": values.detach().cpu().contiguous()}


class TaskPrompt(nn.Module):
    """One task's view of a shared prompt: `shared ∘ (u vᵀ)`, shaped and used like a `SoftPrompt`."""

    method = "prompt"

    def __init__(self, shared: nn.Parameter, rank: int = 1, u: torch.Tensor | None = None,
                 v: torch.Tensor | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"--mpt-rank must be >= 1, got {rank}")
        self.shared = shared
        n, d = shared.shape
        self.u = nn.Parameter(u.detach().float().clone() if u is not None else torch.ones(n, rank))
        self.v = nn.Parameter(v.detach().float().clone() if v is not None else torch.full((d, rank), 1.0 / rank))

    @property
    def num_virtual_tokens(self) -> int:
        return self.shared.shape[0]

    num_input_tokens = num_virtual_tokens

    @property
    def hidden_size(self) -> int:
        return self.shared.shape[1]

    @property
    def rank(self) -> int:
        return self.u.shape[1]

    def forward(self) -> torch.Tensor:
        return self.shared * (self.u @ self.v.T)  # (n, d)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Saved as a plain prompt: the task's materialised vectors."""
        return {"prompt_embeddings": self().detach().to("cpu", torch.float32).contiguous()}


def target_prompt(tensors: dict[str, torch.Tensor], rank: int, train_shared: bool, device) -> TaskPrompt:
    """Stage 2: a fresh factor of `rank` on the shared prompt of a multitask file (trained alone by default)."""
    shared = nn.Parameter(tensors["shared_prompt"].to(device), requires_grad=train_shared)
    return TaskPrompt(shared, rank).to(device)
