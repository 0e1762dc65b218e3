"""Frozen Vision Transformers (Hugging Face `ViTModel`): the backbone of visual prompt tuning (VPT).

The soft prompt lives in the patch-embedding space: its tokens go between `[CLS]` and the patch tokens, after
the position embeddings (VPT, Jia et al. 2022). Images come in as (B, C, H, W) floats in [0, 1]; the folder's
`preprocessor_config.json` (if any) gives the normalisation the backbone was trained with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import BackboneKind, weights_fingerprint

VISION_MODEL_TYPES = ("vit",)


class VisionBackbone(nn.Module):
    """A frozen ViT: `embed` gives [CLS] + patch tokens with positions; `layers` and `final_norm` run them."""

    kind = BackboneKind.VISION
    tokenizer = None

    def __init__(self, model: nn.Module, name: str, *, image_mean: tuple[float, ...] | None = None,
                 image_std: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.model = model
        self.name = name
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.model.eval()
        channels = int(model.config.num_channels)
        self.register_buffer("mean", torch.tensor(image_mean or (0.0,) * channels).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std or (1.0,) * channels).view(1, -1, 1, 1), persistent=False)
        self._fingerprint: str | None = None
        self.autocast_dtype: torch.dtype | None = None

    @classmethod
    def from_folder(cls, model: nn.Module, folder: str | Path, name: str) -> "VisionBackbone":
        processor = Path(folder) / "preprocessor_config.json"
        mean = std = None
        if processor.is_file():
            spec = json.loads(processor.read_text())
            mean, std = spec.get("image_mean"), spec.get("image_std")
        return cls(model, name, image_mean=tuple(mean) if mean else None, image_std=tuple(std) if std else None)

    def train(self, mode: bool = True):
        return super().train(False)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        config = self.model.config
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        return int(config.num_channels), int(size), int(size)

    @property
    def device(self) -> torch.device:
        return self.model.embeddings.patch_embeddings.projection.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embeddings.patch_embeddings.projection.weight.dtype

    @property
    def layers(self) -> list[nn.Module]:
        return list(self.model.layers)

    @property
    def final_norm(self) -> nn.Module:
        return self.model.layernorm

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, 1 + patches, d): [CLS] and patch tokens with position embeddings."""
        if tuple(pixel_values.shape[1:]) != self.image_shape:
            raise ConfigError(f"backbone '{self.name}' takes images of shape {self.image_shape}, got "
                              f"{tuple(pixel_values.shape[1:])}")
        pixels = (pixel_values.to(self.mean.dtype) - self.mean) / self.std
        return self.model.embeddings(pixels.to(self.dtype))

    def input_embedding_matrix(self) -> torch.Tensor:
        raise ConfigError(f"backbone '{self.name}' is a vision model: it has no vocabulary; use --init random")

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    def kv_layout(self) -> Any:
        raise ConfigError("deep prompts for vision models are VPT-deep: --vpt-deep, not --method deep")
