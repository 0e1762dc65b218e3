"""Frozen CLIP (Hugging Face `CLIPModel` + its tokenizer): the backbone of CoOp (context optimisation).

The soft prompt lives in the text model's token-embedding space. `text_features` runs the frozen text transformer
from input embeddings (transformers' `CLIPTextModel.forward` only takes ids) and pools at the end-of-text token
exactly as transformers does for the loaded config: with the legacy `eos_token_id == 2` at the argmax of the
input ids (original CLIP: end-of-text has the highest id), otherwise at the first `eos_token_id`.
`image_features` takes (B, 3, H, W) in [0, 1] and normalises with the processor's mean/std (OpenAI CLIP's by
default). Both return projected, unnormalised features, as `get_text_features` / `get_image_features` do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...frozen import FrozenBackbone
from ...protocols import BackboneKind
from ..loading import from_pretrained, refuse_quantisation
from ..vision.backbone import image_norm_from_folder, normalised_pixels

CLIP_MODEL_TYPES = ("clip",)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LEGACY_EOS_TOKEN_ID = 2  # transformers' marker for "pool at argmax(input_ids)" (configs from before PR #24773)


class CLIPBackbone(FrozenBackbone):
    """A frozen `CLIPModel`: `embed` gives token embeddings, `text_features` runs the text tower from them,
    `image_features` runs the image tower, `logit_scale` is CLIP's learned temperature (exp applied)."""

    kind = BackboneKind.CLIP

    def __init__(self, model: nn.Module, tokenizer: Any, name: str, *, image_mean: tuple[float, ...] | None = None,
                 image_std: tuple[float, ...] | None = None) -> None:
        if not hasattr(model, "text_model") or not hasattr(model, "text_projection"):
            raise ConfigError(f"backbone '{name}' is not a CLIPModel (no text_model / text_projection)")
        super().__init__(model, name, tokenizer)
        channels = int(model.config.vision_config.num_channels)
        mean = image_mean or (OPENAI_CLIP_MEAN if channels == 3 else (0.0,) * channels)
        std = image_std or (OPENAI_CLIP_STD if channels == 3 else (1.0,) * channels)
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"backbone '{name}': image mean/std need {channels} values, got {mean} / {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def from_folder(cls, model: nn.Module, tokenizer: Any, folder: str | Path, name: str) -> CLIPBackbone:
        mean, std = image_norm_from_folder(folder)
        return cls(model, tokenizer, name, image_mean=mean, image_std=std)

    # -- shapes, placement --------------------------------------------------------------------------------
    @property
    def text_model(self) -> nn.Module:
        return self.model.text_model

    @property
    def hidden_size(self) -> int:
        """The text model's width: the soft prompt's vectors are text token embeddings."""
        return int(self.model.config.text_config.hidden_size)

    @property
    def projection_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def context_length(self) -> int:
        """The most text positions the text model has (77 for OpenAI CLIP)."""
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def eos_token_id(self) -> int | None:
        return getattr(self.text_model, "eos_token_id", self.model.config.text_config.eos_token_id)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        config = self.model.config.vision_config
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        return int(config.num_channels), int(size), int(size)

    @property
    def device(self) -> torch.device:
        return self.text_model.embeddings.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_model.embeddings.token_embedding.weight.dtype

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(CLIP's learned log temperature), as CLIPModel.forward applies it (frozen here)."""
        return self.model.logit_scale.exp()

    # -- text tower ---------------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> token embeddings (B, T, d), without position embeddings."""
        return self.text_model.embeddings.token_embedding(input_ids)

    def input_embedding_matrix(self) -> torch.Tensor:
        return self.text_model.embeddings.token_embedding.weight

    def eot_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B,) index of the token whose final state is the text feature, by transformers' rule for this config."""
        eos = self.eos_token_id
        if eos == LEGACY_EOS_TOKEN_ID:
            return input_ids.argmax(dim=-1)
        hits = input_ids == eos
        if not bool(hits.any(dim=-1).all()):
            raise ConfigError(f"backbone '{self.name}': a text has no end-of-text token (id {eos}); the tokenizer's "
                              f"eos ({getattr(self.tokenizer, 'eos_token_id', None)}) must match the text config's")
        return hits.int().argmax(dim=-1)

    def text_features(self, inputs_embeds: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings (B, T, d) (with any soft context already in place) -> projected features (B, P).

        `input_ids` (B, T) only choose the pooled position. Positions are 0..T-1, as CLIP's own."""
        from transformers.masking_utils import create_causal_mask  # start-up time

        text = self.text_model
        if inputs_embeds.shape[1] > self.context_length:
            raise ConfigError(f"backbone '{self.name}': a text of {inputs_embeds.shape[1]} tokens is longer than its "
                              f"{self.context_length} positions")
        hidden = text.embeddings(inputs_embeds=inputs_embeds)
        mask = create_causal_mask(config=text.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None)
        hidden = text.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        hidden = text.final_layer_norm(hidden)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, self.eot_positions(input_ids).to(hidden.device)]
        return self.model.text_projection(pooled)

    # -- image tower --------------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> projected image features (B, P)."""
        pixels = normalised_pixels(self, pixel_values)
        weight = self.model.visual_projection.weight
        pooled = self.model.vision_model(pixel_values=pixels.to(weight.dtype)).pooler_output
        return self.model.visual_projection(pooled)

    def kv_layout(self) -> Any:
        raise ConfigError("deep prompts are not implemented for CLIP: CoOp places its context in the text input")


def detect(config: Any) -> bool:
    return config.model_type in CLIP_MODEL_TYPES


def load(folder: str | Path, name: str, *, dtype: torch.dtype, device: torch.device | str,
         load_in: str | None = None) -> CLIPBackbone:
    from transformers import AutoTokenizer, CLIPModel  # start-up time

    refuse_quantisation(load_in, BackboneKind.CLIP.value)
    model = from_pretrained(CLIPModel.from_pretrained, folder, name, BackboneKind.CLIP.value, dtype=dtype)
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, folder, name, BackboneKind.CLIP.value)
    return CLIPBackbone.from_folder(model.to(device), tokenizer, folder, name)
