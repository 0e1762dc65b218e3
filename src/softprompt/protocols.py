"""The small protocol every backbone kind implements, and the weight fingerprint.

Nothing here guesses from tensor shapes: each backbone kind says where its input embeddings are, how to run
a forward pass from embeddings, and how to turn hidden states into vocabulary scores.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Protocol, runtime_checkable

import torch


class TaskType(str, Enum):
    CLASSIFICATION = "classification"
    GENERATION = "generation"


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
