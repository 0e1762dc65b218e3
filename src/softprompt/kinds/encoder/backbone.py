"""Frozen bidirectional encoders (BERT, MiniLM, RoBERTa, ...) and encoder-decoders (T5, BART, ...).

The soft prompt lives where it does for a causal LM: in the word-embedding space of the (encoder's) input.
An encoder's own position and token-type embeddings are added inside the model, after the prompt is placed.

- `EncoderBackbone` (kind `encoder`): a `*Model` with no vocabulary head; classification goes through a small
  trainable head on the pooled output (`encoders.EncoderClassifier`).
- `EncoderBackbone` with a masked-LM head (kind `masked_lm`): label words are scored at a `[MASK]` position
  (`encoders.MaskedLMPromptedModel`, the PET / LM-BFF verbaliser path).
- `Seq2SeqBackbone` (kind `seq2seq`): the prompt goes into the encoder input; the decoder scores label words
  or generates (`encoders.Seq2SeqPromptedModel`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import BackboneError, ConfigError
from ...frozen import FrozenBackbone
from ...protocols import BackboneKind
from ..loading import load_text_model


class _FrozenHFBackbone(FrozenBackbone):
    """The Hugging Face text-model plumbing the encoder kinds share."""

    kind: BackboneKind

    def __init__(self, model: nn.Module, tokenizer: Any, name: str) -> None:
        super().__init__(model, name, tokenizer)

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        return int(getattr(config, "hidden_size", None) or getattr(config, "d_model"))

    @property
    def max_positions(self) -> int:
        """Learned absolute positions end at `max_position_embeddings`; relative ones (T5) have no limit."""
        return int(getattr(self.model.config, "max_position_embeddings", None) or 1 << 30)  # names vary by model

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def input_embedding_matrix(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    def kv_layout(self) -> tuple[int, int, int]:
        raise ConfigError(f"backbone '{self.name}' ({self.kind.value}): deep prompts are implemented for causal LMs; "
                          f"use --method prompt")

    def keys_values(self, inputs_embeds: torch.Tensor):
        return self.kv_layout()



# Attribute names of the masked-LM head in the common families: BERT/MiniLM (cls), RoBERTa/XLM-R (lm_head),
# ELECTRA generator (generator_predictions + generator_lm_head), DistilBERT (vocab_*).
_MLM_HEADS = ("cls", "lm_head")


class EncoderBackbone(_FrozenHFBackbone):
    """A frozen bidirectional encoder. `hidden_states` runs the whole sequence at once (no key/value cache:
    every position sees every other, so nothing can be computed ahead of the prompt)."""

    def __init__(self, model: nn.Module, tokenizer: Any, name: str) -> None:
        super().__init__(model, tokenizer, name)
        self._head = next((getattr(model, n) for n in _MLM_HEADS if hasattr(model, n)), None)
        self.kind = BackboneKind.MASKED_LM if self._head is not None else BackboneKind.ENCODER
        for token in ("cls_token_id", "sep_token_id"):
            if getattr(tokenizer, token) is None:
                raise BackboneError(f"backbone '{name}': its tokenizer has no {token.split('_')[0]} token")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.sep_token

    @property
    def body(self) -> nn.Module:
        return self.model.base_model

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor, past_key_values: Any = None,
                      use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        if past_key_values is not None or use_cache:
            raise ConfigError(f"backbone '{self.name}' is a bidirectional encoder: it has no key/value cache")
        out = self.body(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids)
        return out.last_hidden_state, None

    def token_logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self._head is None:
            raise ConfigError(f"backbone '{self.name}' has no masked-LM head: classify with a head "
                              f"(the default for this backbone), not label-word scores")
        logits = self._head(hidden.to(self.dtype))
        return logits if token_ids is None else logits[..., token_ids]


class Seq2SeqBackbone(_FrozenHFBackbone):
    """A frozen encoder-decoder (`*ForConditionalGeneration`). The prompt is placed in the encoder input."""

    kind = BackboneKind.SEQ2SEQ

    def __init__(self, model: nn.Module, tokenizer: Any, name: str) -> None:
        super().__init__(model, tokenizer, name)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        start = model.config.decoder_start_token_id
        if start is None:
            raise BackboneError(f"backbone '{name}': its config has no decoder_start_token_id")
        self.decoder_start_token_id = int(start)

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor | None = None, past_key_values: Any = None,
                      use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        """The encoder's final hidden states (positions are the encoder's own: rows are right-padded)."""
        out = self.model.get_encoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        return out.last_hidden_state, None

    def decoder_logits(self, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor,
                       decoder_input_ids: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (B, K, V) of the decoder run on `decoder_input_ids` (B, K) over encoder states."""
        from transformers.modeling_outputs import BaseModelOutput  # start-up time

        out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden),
                         attention_mask=encoder_mask, decoder_input_ids=decoder_input_ids, use_cache=False)
        return out.logits

    def token_logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        raise ConfigError(f"backbone '{self.name}' is an encoder-decoder: label words are scored by its decoder")


def detect_seq2seq(config: Any) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))  # not every config class defines it


def detect_masked_lm(config: Any) -> bool:
    return any(a.endswith("ForMaskedLM") for a in (config.architectures or ()))


def detect_encoder(config: Any) -> bool:
    """A bare encoder (`BertModel`): a masked-LM model type saved without its vocabulary head."""
    from transformers.models.auto.modeling_auto import (  # start-up time
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = config.model_type
    return model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and (
        bool(config.architectures) or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def load_masked_lm(folder: str | Path, name: str, *, dtype: torch.dtype, device: torch.device | str,
                   load_in: str | None = None) -> EncoderBackbone:
    from transformers import AutoModelForMaskedLM  # start-up time

    model, tokenizer = load_text_model(AutoModelForMaskedLM, folder, name, BackboneKind.MASKED_LM.value, dtype=dtype,
                                       device=device, load_in=load_in)
    return EncoderBackbone(model, tokenizer, name=name)


def load_encoder(folder: str | Path, name: str, *, dtype: torch.dtype, device: torch.device | str,
                 load_in: str | None = None) -> EncoderBackbone:
    from transformers import AutoModel  # start-up time

    model, tokenizer = load_text_model(AutoModel, folder, name, BackboneKind.ENCODER.value, dtype=dtype,
                                       device=device, load_in=load_in)
    return EncoderBackbone(model, tokenizer, name=name)


def load_seq2seq(folder: str | Path, name: str, *, dtype: torch.dtype, device: torch.device | str,
                 load_in: str | None = None) -> Seq2SeqBackbone:
    from transformers import AutoModelForSeq2SeqLM  # start-up time

    model, tokenizer = load_text_model(AutoModelForSeq2SeqLM, folder, name, BackboneKind.SEQ2SEQ.value, dtype=dtype,
                                       device=device, load_in=load_in)
    return Seq2SeqBackbone(model, tokenizer, name=name)
