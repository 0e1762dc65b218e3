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

from ...errors import ConfigError
from ...frozen import FrozenBackbone
from ...protocols import BackboneKind
from ..loading import from_pretrained, refuse_quantisation

VISION_MODEL_TYPES = ("vit",)


def image_norm_from_folder(folder: str | Path) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(image_mean, image_std) from a model folder's `preprocessor_config.json`, (None, None) without one."""
    processor = Path(folder) / "preprocessor_config.json"
    if not processor.is_file():
        return None, None
    spec = json.loads(processor.read_text())
    mean, std = spec.get("image_mean"), spec.get("image_std")
    return (tuple(mean) if mean else None), (tuple(std) if std else None)


def normalised_pixels(backbone: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) pixels in [0, 1], shape-checked against `backbone.image_shape` and normalised with its
    `mean` / `std` buffers (fp32, on the backbone's device)."""
    if tuple(pixel_values.shape[1:]) != backbone.image_shape:
        raise ConfigError(f"backbone '{backbone.name}' takes images of shape {backbone.image_shape}, got "
                          f"{tuple(pixel_values.shape[1:])}")
    return (pixel_values.to(device=backbone.mean.device, dtype=backbone.mean.dtype) - backbone.mean) / backbone.std


class VisionBackbone(FrozenBackbone):
    """A frozen ViT: `embed` gives [CLS] + patch tokens with positions; `layers` and `final_norm` run them."""

    kind = BackboneKind.VISION

    def __init__(self, model: nn.Module, name: str, *, image_mean: tuple[float, ...] | None = None,
                 image_std: tuple[float, ...] | None = None) -> None:
        super().__init__(model, name)
        channels = int(model.config.num_channels)
        self.register_buffer("mean", torch.tensor(image_mean or (0.0,) * channels).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std or (1.0,) * channels).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def from_folder(cls, model: nn.Module, folder: str | Path, name: str) -> "VisionBackbone":
        mean, std = image_norm_from_folder(folder)
        return cls(model, name, image_mean=mean, image_std=std)

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
        pixels = normalised_pixels(self, pixel_values)
        return self.model.embeddings(pixels.to(self.dtype))

    def input_embedding_matrix(self) -> torch.Tensor:
        raise ConfigError(f"backbone '{self.name}' is a vision model: it has no vocabulary; use --init random")

    def kv_layout(self) -> Any:
        raise ConfigError("deep prompts for vision models are VPT-deep: --vpt-deep, not --method deep")


def detect(config: Any) -> bool:
    return config.model_type in VISION_MODEL_TYPES


def load(folder: str | Path, name: str, *, dtype: torch.dtype, device: torch.device | str,
         load_in: str | None = None) -> VisionBackbone:
    from transformers import AutoModel  # start-up time

    refuse_quantisation(load_in, BackboneKind.VISION.value)
    model = from_pretrained(AutoModel.from_pretrained, folder, name, BackboneKind.VISION.value, dtype=dtype,
                            add_pooling_layer=False)
    return VisionBackbone.from_folder(model.to(device), folder, name)
