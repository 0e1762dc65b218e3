"""The small protocol every backbone kind implements, and the weight fingerprint.

Nothing here guesses from tensor shapes: each backbone kind says where its input embeddings are, how to run
a forward pass from embeddings, and how to turn hidden states into vocabulary scores.
"""

from __future__ import annotations

import hashlib
from enum import Enum
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


class BackboneKind(str, Enum):
    CAUSAL_LM = "causal_lm"   # decoder-only LM: label words scored at the answer position
    MASKED_LM = "masked_lm"   # bidirectional encoder with an MLM head: label words scored at [MASK]
    ENCODER = "encoder"       # bidirectional encoder, no vocabulary head: a small trainable head classifies
    SEQ2SEQ = "seq2seq"       # encoder-decoder: prompt in the encoder input, the decoder scores or generates
    VISION = "vision"         # Vision Transformer: prompt tokens between [CLS] and the patches (VPT), a head
    CLIP = "clip"             # CLIP image + text encoders: learnable context in the class prompts (CoOp)
    SPEECH = "speech"         # Whisper: prompt tokens on the decoder input (and optionally the encoder output)


@runtime_checkable
class Backbone(Protocol):
    """What prompt tuning needs from a frozen model."""

    name: str
    kind: BackboneKind
    tokenizer: Any

    @property
    def hidden_size(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> input embeddings (B, T, d)."""

    def input_embedding_matrix(self) -> torch.Tensor:
        """The (V, d) input embedding matrix (used to initialise and explain prompts)."""

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor, past_key_values: Any = None,
                      use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        """Run the frozen body from embeddings: -> final hidden states (B, T, d) and the key/value cache."""

    def token_logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (..., d) -> logits (..., V), or only the columns `token_ids` when given."""

    def kv_layout(self) -> tuple[int, int, int]:
        """(layers, key/value heads, head dim) of the attention cache (deep prompts' shape)."""

    def keys_values(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer keys and values of a sequence of input vectors (n, d): [layers, n, kv_heads, head_dim]."""

    def fingerprint(self) -> str: ...


class FrozenBackbone(nn.Module):
    """What every backbone kind shares: the wrapped model never trains (no parameter requires a gradient and it
    stays in eval mode whatever a parent module asks), its fingerprint is computed once, and
    `autocast_dtype` (mixed precision over fp32 weights, for weight-training baselines) starts unset."""

    def __init__(self, model: nn.Module, name: str, tokenizer: Any = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.model.eval()
        self._fingerprint: str | None = None
        self.autocast_dtype: torch.dtype | None = None

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: dropout stays off

    @property
    def device(self) -> torch.device:
        """Where the weights are (a text model's input embedding; other kinds override)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint


def weights_fingerprint(module: nn.Module, *, full: bool = False, samples_per_tensor: int = 2048) -> str:
    """A hex digest that identifies a model's weights.

    The default samples a strided subset of every parameter and hashes it in bfloat16, so the same checkpoint
    loaded in fp32 or bf16, on any device, has one fingerprint, and computing it takes milliseconds.
    `full=True` hashes every byte of every parameter in its own dtype: use it to prove that weights did not
    change at all (e.g. before and after training).
    """
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
        tensor = param.detach()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        flat = tensor.reshape(-1)
        if full:
            digest.update(str(tensor.dtype).encode())
            digest.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
            continue
        step = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::step][:samples_per_tensor].to(device="cpu", dtype=torch.bfloat16)
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:32]
