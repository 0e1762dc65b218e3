"""A frozen backbone's linear layers held in int8 (`--load-in int8`): weight-only, one scale per output row.

A frozen backbone never needs its weights' gradients, only the gradient with respect to each layer's input, so a
layer keeps its weight as int8 rows and a float scale per row: y = (x @ q^T) * scale + bias, computed in x's dtype
from the int8 rows cast on the fly (the cast is a temporary of one layer; nothing of it is kept for the backward
pass, which casts again). The weights take a quarter of their fp32 memory, half of bf16's; on any device.
"""

from __future__ import annotations

import torch
from torch import nn


class _Int8Matmul(torch.autograd.Function):
    """x @ (q * scale)^T with the gradient for x only (the weights are frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, scale)
        return torch.matmul(x, q.to(x.dtype).t()) * scale.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, scale = ctx.saved_tensors
        return torch.matmul(grad * scale.to(grad.dtype), q.to(grad.dtype)), None, None


class Int8Linear(nn.Module):
    """An `nn.Linear` whose weight is held as int8 rows with one scale each (symmetric, round to nearest)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        scale = weight.float().abs().amax(dim=1).clamp(min=1e-12) / 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(weight.float() / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = linear.bias  # frozen like the rest of the backbone

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight in the scales' dtype (the model's float dtype), computed on demand for code that
        reads `.weight`; the layer never stores it."""
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _Int8Matmul.apply(x, self.qweight, self.scale)
        return out + self.bias.to(out.dtype) if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 rows"


def hold_int8(model: nn.Module) -> int:
    """Replace every `nn.Linear` of `model` but its output head (the answer words' scores are read from it) by an
    `Int8Linear`; returns how many were replaced."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child is not head:
                setattr(parent, name, Int8Linear(child))
                replaced += 1
    return replaced
