"""`--method deep`: deep prompt tuning (prefix tuning, Li & Liang 2021; P-tuning v2, Liu et al. 2022): trained
keys and values prepended at every layer; the input sequence itself gets no soft tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..declare import OptionGroup, option
from ..errors import ConfigError


@dataclass(frozen=True)
class DeepOptions:
    """--method deep: how the per-layer key/value prefixes train."""

    reparam: int = option(0, "--method deep: train the prefixes through an MLP of this width, folded into plain "
                             "prefixes when saved (0 = off).", "deep", flag="deep_reparam")


OPTIONS = OptionGroup("deep", "Method: deep prompts (--method deep)", DeepOptions)
TENSORS = ("prefix_keys", "prefix_values")


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

    def folded(self) -> DeepPrompt:
        """Plain prefixes with the MLP applied (the same prefixes, without the MLP's parameters)."""
        with torch.no_grad():
            keys, values = self._pair()
        return DeepPrompt(keys, values, self.hidden_size)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        keys, values = self.folded()._pair()
        return {"prefix_keys": keys.detach().cpu().contiguous(), "prefix_values": values.detach().cpu().contiguous()}


def refuse_unfit_backbone(backbone) -> None:
    """A `ConfigError` (one line) for a backbone a deep prompt cannot live in: layers without keys/values
    (state-space or recurrent), or attention that counts distances in columns (a deep prompt sits before each
    row's padding, so its effect would change with what shares a batch)."""
    model_type = backbone.model.config.model_type
    if not backbone.keeps_keys_values:
        raise ConfigError(f"backbone '{backbone.name}' ({model_type}) has layers without keys/values (state-space or "
                          "recurrent), where a deep prompt would live: use --method prompt or --method dept")
    if not backbone.attends_by_position:
        raise ConfigError(f"backbone '{backbone.name}' ({model_type}) counts attention distances in columns, not "
                          "positions, so a deep prompt (which sits before each row's padding) would change with what "
                          "shares a batch: use --method prompt")


def start(begin) -> DeepPrompt:
    """The keys/values the backbone computes for the initial vectors (or the --init-from file's prefixes),
    trained through an MLP of --deep-reparam width (its init seeded by --seed)."""
    refuse_unfit_backbone(begin.backbone)
    if begin.tensors is not None:
        keys, values = begin.tensors["prefix_keys"], begin.tensors["prefix_values"]
    else:
        keys, values = begin.backbone.keys_values(begin.vectors)
    torch.manual_seed(begin.config.seed)  # the reparameterisation MLP's init
    return DeepPrompt(keys, values, begin.backbone.hidden_size, reparam_hidden=begin.config.deep.reparam)


def from_tensors(tensors: Mapping[str, torch.Tensor], hidden_size: int) -> DeepPrompt:
    return DeepPrompt(tensors["prefix_keys"], tensors["prefix_values"], hidden_size)


def parameters(config, shape, count: int) -> int:
    return shape.layers * count * 2 * shape.kv_heads * shape.head_dim
