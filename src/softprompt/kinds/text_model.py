"""The prompted model every text kind composes: a frozen backbone + a soft prompt placed by a template (+ a
verbaliser for classification). It holds what does not depend on how the backbone attends: encoding rows, placing
the prompt's vectors (and a DePT prompt's text offsets), a plain forward of whole rows, class scores from word
scores, the classification loss, and the prompt file's contents.

Each kind adds what is its own: the causal LM its key/value shortcuts (a cached prompt prefix, deep prefixes, the
frozen-input split) and its word scoring (`causal_lm/model.py`); the encoders their special tokens, `[MASK]`,
heads and decoder (`encoder/models.py`). Nothing here is switched off by a subclass.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, IncompatiblePromptError
from ..formats import Pretrained
from ..methods.dept import DecomposedPrompt
from ..prompts import SoftPrompt
from ..protocols import Backbone, TaskType
from ..scoring import backbone_autocast, place_soft_tokens, text_positions
from ..template import Template, TemplateEncoder, left_pad
from ..verbalizer import Verbalizer


class TextPromptedModel(Pretrained, nn.Module):
    """Frozen text backbone + soft prompt, placed by a template; a kind's model adds how it scores words
    (`word_scores`) and, for generation, its loss (`generation_loss`)."""

    def __init__(self, backbone: Backbone, prompt: SoftPrompt, template: Template,
                 verbalizer: Verbalizer | None = None, *, max_length: int = 128) -> None:
        super().__init__()
        if prompt.hidden_size != backbone.hidden_size:
            raise IncompatiblePromptError(
                f"prompt hidden size {prompt.hidden_size} != backbone '{backbone.name}' hidden size "
                f"{backbone.hidden_size}")
        if prompt.num_input_tokens != template.num_virtual_tokens:
            raise ConfigError(f"the prompt has {prompt.num_virtual_tokens} virtual tokens but the template places "
                              f"{template.num_virtual_tokens}")
        self.backbone = backbone
        self.prompt = prompt
        self.template = template
        self.verbalizer = verbalizer
        self.task = TaskType.CLASSIFICATION if verbalizer is not None else TaskType.GENERATION
        self.encoder = TemplateEncoder(template, backbone.tokenizer, max_length)
        self.word_ids: list[list[int]] = verbalizer.token_ids(self.encoder.answer_ids) if verbalizer else []
        self.max_word_tokens = max((len(w) for w in self.word_ids), default=0)

    @classmethod
    def zero_shot(cls, backbone: Backbone, template_body: str, verbalizer: Verbalizer | None = None, *,
                  max_length: int = 128) -> "TextPromptedModel":
        """The template alone, no soft tokens: the hand-written-prompt baseline a trained prompt must beat."""
        template = Template.parse(template_body)
        if template.num_virtual_tokens:
            raise ConfigError("a zero-shot template has no [soft:N] markers")
        empty = SoftPrompt(torch.zeros(0, backbone.hidden_size, device=backbone.device))
        return cls(backbone, empty, template, verbalizer, max_length=max_length)

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    @property
    def labels(self) -> tuple[str, ...]:
        """The class labels, in score order (classification)."""
        if self.verbalizer is None:
            raise ConfigError("a generation prompt has no labels")
        return tuple(self.verbalizer.labels)

    @property
    def input_fields(self) -> tuple[str, ...]:
        return self.template.input_fields

    @property
    def template_source(self) -> str:
        return self.template.source

    def file_metadata(self) -> dict[str, Any]:
        return {"template": self.template.source,
                "verbalizer": self.verbalizer.as_dict() if self.verbalizer else None,
                "labels": list(self.labels) if self.task is TaskType.CLASSIFICATION else None}

    def file_tensors(self) -> dict[str, torch.Tensor]:
        return self.prompt.to_tensors()  # a deep prompt's MLP (if any) is folded into plain prefixes

    def with_prompt(self, prompt: SoftPrompt) -> "TextPromptedModel":
        """The same task (template, verbaliser, length) with another prompt (explain's hard-prompt projection)."""
        return type(self)(self.backbone, prompt, self.template, self.verbalizer, max_length=self.max_length)

    def widen_for_inputs(self, max_input_tokens: int) -> None:
        fields = self.input_fields
        overhead = len(self.encoder.encode({f: "" for f in fields}).input_ids) + self.max_word_tokens
        self.widen_context(min(max_input_tokens * max(1, len(fields)) + overhead, self.position_limit()))

    def position_limit(self) -> int:
        """Most tokens a row may hold (a kind with learned absolute positions says fewer)."""
        return 1 << 30

    def row_columns(self, fields: Mapping[str, str]) -> int:
        """Backbone columns one row of these fields costs."""
        return len(self.encoder.encode(fields).input_ids)

    def widen_context(self, max_length: int) -> "TextPromptedModel":
        """Let contexts grow to `max_length` tokens before inputs are cut (never narrows). A server widens
        its prompts so that no input it accepts is truncated; returns self."""
        if max_length > self.max_length:
            self.encoder = TemplateEncoder(self.template, self.backbone.tokenizer, max_length)
        return self

    def _autocast(self):
        return backbone_autocast(self.backbone)

    @property
    def offsets_text(self) -> bool:
        """Whether the prompt also shifts the text tokens' input embeddings (DePT's low-rank offset)."""
        return isinstance(self.prompt, DecomposedPrompt)

    def answer_columns(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, T) True at a row's answer tokens, which are not text (a causal LM's generation targets); else None."""
        return None

    # ---- forward -------------------------------------------------------------------------------------------
    def embed(self, batch: Mapping[str, torch.Tensor], first_text_position: int = 0) -> torch.Tensor:
        """Token embeddings with the prompt's vectors placed at the soft positions (and a DePT prompt's offsets
        added to the text tokens): (B, T, d). `batch` holds whole rows, or the columns after a cached prefix
        whose text columns come first (`first_text_position`: how many)."""
        tokens = self.backbone.embed(batch["input_ids"])                  # (B, T, d)
        if self.offsets_text:
            positions = text_positions(batch["soft_index"], batch["attention_mask"], self.answer_columns(batch))
            if first_text_position:
                positions = torch.where(positions >= 0, positions + first_text_position, positions)
            tokens = tokens + self.prompt.text_offsets(positions).to(tokens.dtype)
        if self.prompt.num_input_tokens == 0:                             # zero-shot or deep: no input soft tokens
            return tokens
        return place_soft_tokens(tokens, batch["soft_index"], self.prompt())

    def hidden(self, batch: Mapping[str, torch.Tensor], past_key_values: Any = None,
               use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        """Final hidden states (B, T, d) of whole rows (and the backbone's cache when `use_cache`)."""
        with self._autocast():
            return self.backbone.hidden_states(self.embed(batch), batch["attention_mask"], batch["position_ids"],
                                               past_key_values=past_key_values, use_cache=use_cache)

    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            logits = self.backbone.token_logits(hidden)
        return torch.log_softmax(logits.float(), dim=-1)

    # ---- batches -------------------------------------------------------------------------------------------
    def make_batch(self, examples: Sequence[Mapping[str, Any]], label_field: str | None = "label") -> dict[str, torch.Tensor]:
        """Encode and pad examples. Classification rows with a label get `targets` (class indices); generation
        rows with a target get the kind's answer layout. `label_field=None` encodes inputs only."""
        if self.task is TaskType.CLASSIFICATION:
            return self._classification_batch(examples, label_field)
        return self._generation_batch(examples, label_field)

    def _classification_batch(self, examples, label_field) -> dict[str, torch.Tensor]:
        # One row per example, with room for the longest word's continuation.
        reserve = self.max_word_tokens - 1
        batch = left_pad([self.encoder.encode(ex, reserve=reserve) for ex in examples], self.encoder.pad_id)
        return self._with_targets(examples, label_field, batch)

    def _with_targets(self, examples, label_field, batch: dict) -> dict:
        """`batch` with each labelled row's class index as `targets`."""
        if examples and label_field is not None and label_field in examples[0]:
            batch["targets"] = torch.tensor([self.labels.index(str(ex[label_field])) for ex in examples])
        return batch

    def _generation_batch(self, examples, label_field) -> dict[str, torch.Tensor]:
        raise ConfigError(f"backbone '{self.backbone.name}' ({self.backbone.kind.value}) does not generate: "
                          "use --task classification")

    # ---- classification -----------------------------------------------------------------------------------
    def word_scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Log-likelihood of every label word (B, W): how the kind reads its words."""
        raise NotImplementedError(f"{type(self).__name__} does not score label words")

    def class_scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Class scores (B, C): log-likelihoods of each class's words (log-sum-exp over several words)."""
        if self.verbalizer is None:
            raise ConfigError("class scores need a classification prompt (a verbalizer)")
        return self.verbalizer.class_scores(self.word_scores(batch))

    @torch.no_grad()
    def classify(self, inputs: Sequence[str | Mapping[str, Any]], batch_size: int = 32) -> list[str]:
        """Predicted label per input (a string fills the template's single input field).

        Examples:
            >>> model.classify(["A three-hour cinema master class."])   # doctest: +SKIP
            ['positive']
        """
        fields = self.template.input_fields
        rows = [{fields[0]: x} if isinstance(x, str) else x for x in inputs]
        labels: list[str] = []
        for start in range(0, len(rows), batch_size):
            batch = self.make_batch(rows[start:start + batch_size], label_field=None)
            batch = {k: v.to(self.backbone.device) for k, v in batch.items()}
            labels += [self.labels[i] for i in self.class_scores(batch).argmax(-1).tolist()]
        return labels

    # ---- loss ----------------------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss and figures. Classification: cross-entropy over class scores. Generation: the kind's
        mean negative log-likelihood of the target tokens (`generation_loss`)."""
        if self.task is TaskType.CLASSIFICATION:
            scores = self.class_scores(batch)
            loss = F.cross_entropy(scores, batch["targets"])
            correct = (scores.argmax(-1) == batch["targets"]).float().mean().item()
            return loss, {"accuracy": correct}
        return self.generation_loss(batch), {}

    def generation_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise ConfigError(f"backbone '{self.backbone.name}' ({self.backbone.kind.value}) does not generate: "
                          "use --task classification")
