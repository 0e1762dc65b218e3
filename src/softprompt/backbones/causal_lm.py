"""Frozen Hugging Face causal language models (Llama, GPT-2, Gemma, SmolLM, ... families)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import BackboneKind, weights_fingerprint


class CausalLMBackbone(nn.Module):
    """A frozen `*ForCausalLM` model behind the `Backbone` protocol.

    The wrapped model never trains: every parameter has `requires_grad=False` and the model stays in eval mode
    (dropout off) even when a parent module calls `.train()`.

    >>> backbone = CausalLMBackbone(model, tokenizer, name="my-model")   # doctest: +SKIP
    >>> hidden, _ = backbone.hidden_states(backbone.embed(ids), mask, positions)   # (B, T, d)
    """

    kind = BackboneKind.CAUSAL_LM

    def __init__(self, model: nn.Module, tokenizer: Any, name: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.model.eval()
        if tokenizer.pad_token_id is None:
            # Left padding only needs some id; its embedding is masked out by the attention mask.
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        self._softcap = getattr(model.config, "final_logit_softcapping", None)
        self._fingerprint: str | None = None
        self._compiled_body: Any = None

    def train(self, mode: bool = True) -> "CausalLMBackbone":
        # The backbone is frozen: keep it in eval mode whatever the parent asks.
        return super().train(False)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def compile_for_training(self) -> None:
        """torch.compile the decoder for gradient-carrying forwards (training); inference stays eager.

        Fuses the element-wise work around the matmuls: ~1.8x faster training steps on a 2-core CPU
        (benchmarks/vs_peft.py), after a first compile of a few minutes that inductor caches on disk.
        """
        if self._compiled_body is None:
            self._compiled_body = torch.compile(self.model.base_model, dynamic=True)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def input_embedding_matrix(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor, past_key_values: Any = None,
                      use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        # base_model is the decoder without the LM head: vocabulary logits are computed by the caller only at
        # the positions that need them.
        body = self.model.base_model
        if self._compiled_body is not None and torch.is_grad_enabled() and past_key_values is None and not use_cache:
            body = self._compiled_body
        out = body(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                    position_ids=position_ids, cache=past_key_values, use_cache=use_cache)
        return out.last_hidden_state, (out.cache if use_cache else None)

    def token_logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        head = self.model.get_output_embeddings()
        weight, bias = head.weight, getattr(head, "bias", None)
        if token_ids is not None:
            weight = weight[token_ids]
            bias = bias[token_ids] if bias is not None else None
        logits = F.linear(hidden.to(weight.dtype), weight, bias)
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint
