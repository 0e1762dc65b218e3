"""`--method prompt`: `num_virtual_tokens` trained vectors in the input sequence (Lester et al., 2021)."""

from __future__ import annotations

from typing import Mapping

import torch

from ..prompts import SoftPrompt

TENSORS = ("prompt_embeddings",)


def start(begin) -> SoftPrompt:
    """A fresh prompt of the initial vectors, or the --init-from file's vectors."""
    if begin.tensors is not None:
        return SoftPrompt(begin.tensors["prompt_embeddings"])
    return SoftPrompt(begin.vectors.to(begin.backbone.device))


def from_tensors(tensors: Mapping[str, torch.Tensor], hidden_size: int) -> SoftPrompt:
    return SoftPrompt(tensors["prompt_embeddings"])


def parameters(config, shape, count: int) -> int:
    return count * shape.hidden
