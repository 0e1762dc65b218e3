"""The soft prompt: `num_virtual_tokens` trainable vectors in the backbone's embedding space (fp32 master)."""

from __future__ import annotations

import math
from enum import Enum
from typing import Sequence

import torch
import torch.nn.functional as F
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
    DEPT = "dept"       # a shorter prompt + a low-rank offset of the text tokens' input embeddings (DePT)


class Reparam(str, Enum):
    """How a `--method prompt` prompt trains: its vectors directly, or through a residual MLP folded away at save."""

    NONE = "none"
    RESIDUAL = "residual"  # Residual Prompt Tuning (Razdaibiedina et al., 2023)


def prompt_from_tensors(method: str, tensors: dict[str, torch.Tensor],
                        hidden_size: int) -> "SoftPrompt | DeepPrompt | DecomposedPrompt":
    """Rebuild a prompt module from a prompt file's tensors."""
    if PromptMethod(method) is PromptMethod.MULTITASK:
        raise ConfigError("a multitask shared-prompt file holds no single task's prompt: use a task's prompt file "
                          "written beside it, or adapt it to a new task with `softprompt train --init-from`")
    if PromptMethod(method) is PromptMethod.DEEP:
        return DeepPrompt(tensors["prefix_keys"], tensors["prefix_values"], hidden_size)
    if PromptMethod(method) is PromptMethod.DEPT:
        return DecomposedPrompt(tensors["prompt_embeddings"], tensors["text_offset_a"], tensors["text_offset_b"])
    return SoftPrompt(tensors["prompt_embeddings"])


TENSOR_NAMES = {PromptMethod.PROMPT: ("prompt_embeddings",), PromptMethod.DEEP: ("prefix_keys", "prefix_values"),
                PromptMethod.MULTITASK: ("shared_prompt",),
                PromptMethod.DEPT: ("prompt_embeddings", "text_offset_a", "text_offset_b")}


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


class ResidualPrompt(nn.Module):
    """Residual prompt tuning (Razdaibiedina et al., ACL Findings 2023): the prompt's vectors pass through one
    bottleneck MLP shared by every token, with a skip connection, while training:

        P'_i = P_i + dropout(LayerNorm(W_up(ReLU(W_down(P_i)))))

    `folded()` is the plain `SoftPrompt` of the projected vectors (dropout off): what a prompt file stores, so a
    trained residual prompt costs what a plain one does at inference and loads, serves and exports as one.

    One change from the paper: LayerNorm's gain and bias start at zero, so the projected prompt starts equal to
    its initialisation (label words, vocabulary...). A unit gain adds vectors of norm sqrt(d) (24 on SmolLM2-135M)
    to embeddings whose rows have norm ~3.2 there: the init would be lost in the first forward pass.

    Examples:
        >>> prompt = ResidualPrompt(torch.zeros(4, 8), bottleneck=3)
        >>> prompt().shape, tuple(prompt.folded().embeddings.shape)
        (torch.Size([4, 8]), (4, 8))
    """

    method = "prompt"

    def __init__(self, embeddings: torch.Tensor, bottleneck: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embeddings.dim() != 2:
            raise ConfigError(f"prompt embeddings must be [num_virtual_tokens, hidden_size], got {tuple(embeddings.shape)}")
        if bottleneck < 1 or not 0 <= dropout < 1:
            raise ConfigError(f"--residual-bottleneck must be >= 1 and --residual-dropout in [0, 1), got {bottleneck} "
                              f"and {dropout}")
        hidden = embeddings.shape[1]
        self.embeddings = nn.Parameter(embeddings.detach().to(torch.float32).clone())
        self.down = nn.Linear(hidden, bottleneck, device=embeddings.device)
        self.up = nn.Linear(bottleneck, hidden, device=embeddings.device)
        self.norm = nn.LayerNorm(hidden, device=embeddings.device)
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        self.dropout = dropout

    @property
    def num_virtual_tokens(self) -> int:
        return self.embeddings.shape[0]

    num_input_tokens = num_virtual_tokens

    @property
    def hidden_size(self) -> int:
        return self.embeddings.shape[1]

    def _project(self, training: bool) -> torch.Tensor:
        branch = self.norm(self.up(F.relu(self.down(self.embeddings))))            # (n, d)
        return self.embeddings + F.dropout(branch, self.dropout, training=training)

    def forward(self) -> torch.Tensor:
        return self._project(self.training)  # (n, d)

    def folded(self) -> SoftPrompt:
        """The projected vectors (no dropout) as a plain prompt, without the MLP's parameters."""
        with torch.no_grad():
            return SoftPrompt(self._project(training=False))

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return self.folded().to_tensors()


def dept_rank(num_virtual_tokens: int, hidden_size: int, max_positions: int,
              budget_tokens: int = 20) -> int:
    """The largest rank r with m*d + r*(s + d) <= budget*d: DePT at (at most) the parameter count of a plain
    prompt of `budget_tokens` tokens (m prompt tokens, s = max_positions, d = hidden size); 0 if none fits."""
    room = (budget_tokens - num_virtual_tokens) * hidden_size
    return max(0, room // (max_positions + hidden_size))


class DecomposedPrompt(nn.Module):
    """DePT (Shi & Lipani, ICLR 2024): a shorter soft prompt plus a low-rank update A·B of the text tokens'
    input embeddings, position by position (A: max_positions x r, B: r x d).

    A text token's position is its index among its row's real text tokens: every token the template renders
    (BOS, literal text and fields) counts; soft tokens, padding, answer and generated tokens neither count nor
    get an offset. Left padding and soft runs anywhere in a template therefore shift no position, and a token at
    position >= max_positions (an input longer than the run's --max-length, as a server may accept) gets no
    offset. B starts at zero: an untrained DePT prompt is its plain prompt.

    Examples:
        >>> prompt = DecomposedPrompt(torch.zeros(10, 8), torch.zeros(128, 2), torch.zeros(2, 8))
        >>> prompt().shape, prompt.text_offsets(torch.tensor([[-1, 0, 1, 200]])).shape
        (torch.Size([10, 8]), torch.Size([1, 4, 8]))
    """

    method = "dept"
    OFFSET_PARAMETERS = ("offset_a", "offset_b")  # trained at their own rate (--dept-lr)

    def __init__(self, embeddings: torch.Tensor, offset_a: torch.Tensor, offset_b: torch.Tensor) -> None:
        super().__init__()
        if embeddings.dim() != 2 or offset_a.dim() != 2 or offset_b.dim() != 2 or (
                offset_a.shape[1] != offset_b.shape[0] or offset_b.shape[1] != embeddings.shape[1]):
            raise ConfigError(f"a DePT prompt needs embeddings [n, d], A [positions, r] and B [r, d]; got "
                              f"{tuple(embeddings.shape)}, {tuple(offset_a.shape)} and {tuple(offset_b.shape)}")
        self.embeddings = nn.Parameter(embeddings.detach().to(torch.float32).clone())
        self.offset_a = nn.Parameter(offset_a.detach().to(torch.float32).clone())   # (s, r)
        self.offset_b = nn.Parameter(offset_b.detach().to(torch.float32).clone())   # (r, d)

    @classmethod
    def initial(cls, embeddings: torch.Tensor, max_positions: int, rank: int,
                generator: torch.Generator | None = None) -> "DecomposedPrompt":
        """A fresh DePT prompt: A uniform in +-1/sqrt(r) (LoRA's init), B zero."""
        bound = 1.0 / math.sqrt(rank)
        offset_a = (torch.rand(max_positions, rank, generator=generator) * 2 - 1) * bound
        return cls(embeddings, offset_a.to(embeddings.device),
                   torch.zeros(rank, embeddings.shape[1], device=embeddings.device))

    @property
    def num_virtual_tokens(self) -> int:
        return self.embeddings.shape[0]

    num_input_tokens = num_virtual_tokens

    @property
    def hidden_size(self) -> int:
        return self.embeddings.shape[1]

    @property
    def rank(self) -> int:
        return self.offset_a.shape[1]

    @property
    def max_positions(self) -> int:
        return self.offset_a.shape[0]

    def forward(self) -> torch.Tensor:
        return self.embeddings  # (m, d)

    def text_offsets(self, positions: torch.Tensor) -> torch.Tensor:
        """Text positions (B, T), -1 where a column is not a text token -> offsets (B, T, d) fp32 (zero there
        and at positions >= max_positions)."""
        table = self.offset_a @ self.offset_b                                          # (s, d)
        valid = (positions >= 0) & (positions < self.max_positions)                    # (B, T)
        return table[positions.clamp(0, self.max_positions - 1)] * valid.unsqueeze(-1)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in (
            ("prompt_embeddings", self.embeddings), ("text_offset_a", self.offset_a),
            ("text_offset_b", self.offset_b))}


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
