"""`--method dept`: DePT (Shi & Lipani, ICLR 2024), a shorter prompt plus a low-rank offset of the text
tokens' input embeddings, trained at its own rate (--dept-lr)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..declare import OptionGroup, option
from ..errors import ConfigError
from ..prompts import InputVectors


@dataclass(frozen=True)
class DePTOptions:
    """--method dept: the prompt (--num-virtual-tokens, default 10) and the low-rank offset's rank and rate."""

    rank: int | None = option(None, "--method dept: rank r of the offset A·B (A: --max-length x r, B: r x hidden "
                                    "size); default: the largest with m·d + r·(s + d) <= 20·d, a 20-token prompt's "
                                    "parameter count (m prompt tokens, s = --max-length, d = hidden size).",
                              "dept", flag="dept_rank")
    lr: float = option(1e-4, "--method dept: peak learning rate of the low-rank offset (the prompt's is --lr; the "
                             "offset moves every text token, so it trains more slowly).", "dept", flag="dept_lr")


OPTIONS = OptionGroup("dept", "Method: DePT, a shorter prompt + a low-rank offset of the text embeddings "
                      "(--method dept)", DePTOptions)
TENSORS = ("prompt_embeddings", "text_offset_a", "text_offset_b")
DEFAULT_TOKENS = 10  # half a default prompt; the other half's parameters go to the offset
BUDGET_TOKENS = 20   # the rank fills a plain prompt of this many tokens' parameter count


def dept_rank(num_virtual_tokens: int, hidden_size: int, max_positions: int,
              budget_tokens: int = BUDGET_TOKENS) -> int:
    """The largest rank r with m*d + r*(s + d) <= budget*d: DePT at (at most) the parameter count of a plain
    prompt of `budget_tokens` tokens (m prompt tokens, s = max_positions, d = hidden size); 0 if none fits."""
    room = (budget_tokens - num_virtual_tokens) * hidden_size
    return max(0, room // (max_positions + hidden_size))


class DecomposedPrompt(InputVectors, nn.Module):
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
                generator: torch.Generator | None = None) -> DecomposedPrompt:
        """A fresh DePT prompt: A uniform in +-1/sqrt(r) (LoRA's init), B zero."""
        bound = 1.0 / math.sqrt(rank)
        offset_a = (torch.rand(max_positions, rank, generator=generator) * 2 - 1) * bound
        return cls(embeddings, offset_a.to(embeddings.device),
                   torch.zeros(rank, embeddings.shape[1], device=embeddings.device))


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

OFFSET_PARAMETERS = DecomposedPrompt.OFFSET_PARAMETERS


def _rank(config, hidden: int, count: int) -> int:
    return config.dept.rank or dept_rank(count, hidden, config.max_length, BUDGET_TOKENS)


def start(begin) -> DecomposedPrompt:
    """The initial vectors with a fresh offset (A uniform, B zero), or the --init-from file's prompt."""
    if begin.tensors is not None:
        return from_tensors(begin.tensors, begin.backbone.hidden_size)
    config, count = begin.config, begin.vectors.shape[0]
    rank = _rank(config, begin.backbone.hidden_size, count)
    if rank < 1:
        raise ConfigError(f"--method dept: a {count}-token prompt leaves no room for a low-rank offset within a "
                          f"{BUDGET_TOKENS}-token prompt's parameters (hidden size {begin.backbone.hidden_size}, "
                          f"--max-length {config.max_length}); lower --num-virtual-tokens or give --dept-rank")
    return DecomposedPrompt.initial(begin.vectors.to(begin.backbone.device), config.max_length, rank,
                                    begin.generator)


def from_tensors(tensors: Mapping[str, torch.Tensor], hidden_size: int) -> DecomposedPrompt:
    return DecomposedPrompt(tensors["prompt_embeddings"], tensors["text_offset_a"], tensors["text_offset_b"])


def parameters(config, shape, count: int) -> int:
    return count * shape.hidden + _rank(config, shape.hidden, count) * (config.max_length + shape.hidden)


def card(config) -> str:
    rank = f"rank {config.dept.rank}" if config.dept.rank else "the largest rank within a 20-token prompt's size"
    return f", DePT low-rank text offset ({rank}) at lr {config.dept.lr}"
