"""A frozen backbone's linear layers held in int8 (`--load-in int8`): weight-only, one scale per group of 128
input columns of each output row.

A frozen backbone never needs its weights' gradients, only the gradient with respect to each layer's input, so a
layer keeps its weight as int8 and a float scale per group: y = x @ (q * scale)^T + bias, computed in x's dtype
from the int8 values widened on the fly (a temporary of one layer; nothing of it is kept for the backward pass,
which widens again). The weights take a little over a quarter of their fp32 memory (the scales add 4 bytes per
128 weights), about half of bf16's; on any device. Groups rather than whole rows keep one large weight from
coarsening its whole row (docs/results.md measures what that buys).
"""

from __future__ import annotations

import torch
from torch import nn

GROUP_SIZE = 128  # input columns per scale; a layer whose width it does not divide gets one scale per row


def _dequantised(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    rows, columns = q.shape
    return (q.view(rows, scale.shape[1], -1).to(dtype) * scale.to(dtype)[:, :, None]).view(rows, columns)


class _Int8Matmul(torch.autograd.Function):
    """x @ dequantised(q, scale)^T with the gradient for x only (the weights are frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, scale)
        return torch.matmul(x, _dequantised(q, scale, x.dtype).t())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, scale = ctx.saved_tensors
        return torch.matmul(grad, _dequantised(q, scale, grad.dtype)), None, None


def int8_bytes(out_features: int, in_features: int, scale_bytes: int) -> int:
    """What an `Int8Linear` of this shape holds for its weight: a byte per weight and a scale per group."""
    groups = in_features // GROUP_SIZE if in_features % GROUP_SIZE == 0 else 1
    return out_features * in_features + out_features * groups * scale_bytes


class Int8Linear(nn.Module):
    """An `nn.Linear` whose weight is held as int8 with one scale per group of `GROUP_SIZE` input columns of a row
    (symmetric, round to nearest)."""

    def __init__(self, linear: nn.Linear, group_size: int | None = GROUP_SIZE) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        divides = group_size is not None and self.in_features % group_size == 0
        self.group_size = group_size if divides else self.in_features  # None: one scale per row
        grouped = weight.view(self.out_features, -1, self.group_size)
        scale = grouped.abs().amax(dim=-1).clamp(min=1e-12) / 127                      # (out, groups)
        q = torch.round(grouped / scale[:, :, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("qweight", q.view(self.out_features, self.in_features))
        self.register_buffer("scale", scale)
        self.bias = linear.bias  # frozen like the rest of the backbone

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight in the scales' dtype (the model's float dtype), computed on demand for code that
        reads `.weight`; the layer never stores it."""
        return _dequantised(self.qweight, self.scale, self.scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _Int8Matmul.apply(x, self.qweight, self.scale)
        return out + self.bias.to(out.dtype) if self.bias is not None else out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8, "
                f"groups of {self.group_size}")


def hold_int8(model: nn.Module, group_size: int | None = GROUP_SIZE) -> int:
    """Replace every `nn.Linear` of `model` but its output head (the answer words' scores are read from it) by an
    `Int8Linear`; returns how many were replaced."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child is not head:
                setattr(parent, name, Int8Linear(child, group_size))
                replaced += 1
    return replaced
