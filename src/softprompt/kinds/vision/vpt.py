"""Visual prompt tuning (VPT, Jia et al. 2022) on a frozen ViT, with a light linear head on [CLS].

- Shallow (default): `n` prompt tokens enter once, between [CLS] and the patch tokens.
- Deep (`--vpt-deep`): every layer gets its own `n` tokens: before layer i the previous layer's outputs at the
  prompt positions are replaced by layer i's prompt (n x layers vectors).

The prompt file stores `prompt_embeddings` (layers x n rows for deep), the head (`head.weight`, `head.bias`)
and `vision` metadata (deep or not, tokens per layer, image shape).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ...config import TrainConfig
from ...data import TaskData
from ...errors import ConfigError
from ...prompts import SoftPrompt
from ...scoring import backbone_autocast
from ..classifier import InputSpec, PromptedClassifier, head_tensors, linear_head


class VPTModel(PromptedClassifier):
    """Frozen ViT + visual prompt + linear head on the final [CLS] state.

    Examples:
        >>> model = VPTModel(backbone, VPTModel.initial_prompt(backbone, 10), ["sandal", "shirt"])  # doctest: +SKIP
        >>> model.class_scores(model.make_batch([{"image": torch.rand(1, 28, 28)}], None))         # doctest: +SKIP
    """

    def __init__(self, backbone: Any, prompt: SoftPrompt, labels: Sequence[str], *, deep: bool = False,
                 head: nn.Linear | None = None, field: str = "image") -> None:
        layers = len(backbone.layers)
        total = prompt.num_virtual_tokens
        if deep and total % layers:
            raise ConfigError(f"a deep visual prompt has tokens_per_layer x {layers} layers rows, got {total}")
        self.tokens_per_layer = total // layers if deep else total
        spec = InputSpec(f"[soft:{self.tokens_per_layer}] {{{field}}} {{label}}", (field,), total)
        super().__init__(backbone, prompt, spec, labels)
        self.vpt_deep = deep
        self.head = head if head is not None else nn.Linear(backbone.hidden_size, len(self.labels))
        self.head.to(device=backbone.device, dtype=torch.float32)

    @staticmethod
    def initial_prompt(backbone: Any, tokens: int, *, deep: bool = False,
                       generator: torch.Generator | None = None) -> SoftPrompt:
        """VPT's init: uniform with the Xavier bound of the patch projection (fan-in C*p*p, fan-out d)."""
        channels, patch = backbone.model.config.num_channels, backbone.model.config.patch_size
        bound = math.sqrt(6.0 / (channels * patch * patch + backbone.hidden_size))
        rows = tokens * (len(backbone.layers) if deep else 1)
        vectors = (torch.rand(rows, backbone.hidden_size, generator=generator) * 2 - 1) * bound
        return SoftPrompt(vectors.to(backbone.device))

    def inputs(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        field = self.spec.input_fields[0]
        images = [torch.as_tensor(r[field]) for r in rows]
        pixels = torch.stack([im.float() / 255.0 if im.dtype == torch.uint8 else im.float() for im in images])
        return {"pixel_values": pixels}

    def features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, d) fp32: the final [CLS] state after the backbone's last norm."""
        backbone, n = self.backbone, self.tokens_per_layer
        with backbone_autocast(backbone):
            tokens = backbone.embed(batch["pixel_values"])                      # (B, 1 + P, d)
            rows = tokens.shape[0]
            prompt = self.prompt().to(tokens.dtype)
            per_layer = prompt.view(-1, n, prompt.shape[-1]) if n else prompt.new_zeros(1, 0, prompt.shape[-1])
            hidden = torch.cat([tokens[:, :1], per_layer[0].expand(rows, -1, -1), tokens[:, 1:]], dim=1)
            for index, layer in enumerate(backbone.layers):
                if self.vpt_deep and index > 0:
                    hidden = torch.cat([hidden[:, :1], per_layer[index].expand(rows, -1, -1), hidden[:, 1 + n:]], dim=1)
                hidden = layer(hidden, None)
            hidden = backbone.final_norm(hidden)
        return hidden[:, 0].float()

    def class_scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(batch))

    def file_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().file_tensors(), **head_tensors(self.head)}

    def file_metadata(self) -> dict[str, Any]:
        return {**super().file_metadata(), "head": {"kind": "linear", "pooling": "cls", "labels": list(self.labels),
                         "params": sum(p.numel() for p in self.head.parameters())},
                "vision": {"deep": self.vpt_deep, "tokens_per_layer": self.tokens_per_layer,
                           "image_shape": list(self.backbone.image_shape)}}


def build_vision_model(config: TrainConfig, backbone: Any, task: TaskData) -> VPTModel:
    """The VPT model `softprompt train` builds for a ViT backbone (`--num-virtual-tokens`, `--vpt-deep`)."""
    if task.labels is None:
        raise ConfigError("a vision backbone classifies: give an image classification dataset")
    if config.init.value != "random" and config.init.value != "labels":
        raise ConfigError(f"--init {config.init.value}: a vision backbone has no vocabulary; use --init random")
    field = task.text_fields[0]
    generator = torch.Generator().manual_seed(config.seed)
    prompt = VPTModel.initial_prompt(backbone, config.num_virtual_tokens or 10, deep=config.vpt.deep,
                                     generator=generator)
    torch.manual_seed(config.seed)
    return VPTModel(backbone, prompt, task.labels, deep=config.vpt.deep, field=field)


def vision_model_from_file(backbone: Any, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> VPTModel:
    vision = meta.get("vision") or {}
    field = meta["template"].split("{")[1].split("}")[0] if "{" in meta["template"] else "image"
    return VPTModel(backbone, SoftPrompt(tensors["prompt_embeddings"].to(backbone.device)), meta["labels"],
                    deep=bool(vision.get("deep")), head=linear_head(tensors), field=field)
