"""Prompted models for bidirectional encoders and encoder-decoders: same prompt, template, file, loop and CLI.

- `EncoderClassifier`: soft prompt + a small trainable linear head on the pooled output of a frozen encoder
  that has no vocabulary head (a sentence encoder such as all-MiniLM-L6-v2). The head is part of the task's
  artefact: it is saved in the prompt file beside the prompt's tensors (`head.weight`, `head.bias`).
- `MaskedLMPromptedModel`: the verbaliser path for encoders with a masked-LM head: the template's answer slot
  becomes `[MASK]` and each class scores its label word there (PET / LM-BFF style; one token per word).
- `Seq2SeqPromptedModel`: T5/BART-style models: the prompt goes into the encoder input; the decoder scores
  each label word (teacher-forced, any number of tokens) or is trained on / generates targets.

The kind table (`softprompt.kinds.table`) picks the class from the backbone's kind through the `assemble_*` functions.
Each composes the kind-neutral text model (`kinds/text_model.py`): encoders see the whole sequence at once, so
nothing of the causal LM's key/value shortcuts applies here.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ...errors import ConfigError
from ...prompts import SoftPrompt
from ...protocols import Backbone, TaskType
from ...scoring import label_word_scores, same_words_per_row, token_log_likelihood
from ...template import Encoded, Template, left_pad
from ...verbalizer import Verbalizer
from ..classifier import head_tensors
from ..text_model import TextPromptedModel

POOLINGS = ("mean", "cls")


def _wrap(encoded: Encoded, first: list[int], last: list[int]) -> Encoded:
    return Encoded(first + encoded.input_ids + last, [-1] * len(first) + encoded.soft_index + [-1] * len(last))


def right_pad(sequences: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids, soft_index, attention_mask, position_ids (models with learned absolute
    positions that they count themselves, such as BART, need every row to start at column 0)."""
    width = max(len(s.input_ids) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    soft = torch.full((len(sequences), width), -1, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq.input_ids)
        ids[row, :n] = torch.tensor(seq.input_ids, dtype=torch.long)
        soft[row, :n] = torch.tensor(seq.soft_index, dtype=torch.long)
        mask[row, :n] = 1
    positions = torch.arange(width).expand(len(sequences), -1).clone()
    return {"input_ids": ids, "soft_index": soft, "attention_mask": mask, "position_ids": positions}


class _Bidirectional(TextPromptedModel):
    """What the encoder kinds share: input-level prompts only, learned absolute positions, every column run."""

    def __init__(self, backbone: Backbone, prompt: SoftPrompt, template: Template,
                 verbalizer: Verbalizer | None, *, max_length: int) -> None:
        if prompt.method == "deep":
            raise ConfigError(f"backbone '{backbone.name}' ({backbone.kind.value}): only input-level soft prompts "
                              f"are implemented (--method prompt); deep prompts are for causal LMs")
        super().__init__(backbone, prompt, template, verbalizer, max_length=max_length)

    def position_limit(self) -> int:
        """Learned absolute positions (BERT, BART) end at `max_position_embeddings`; keep room for the special
        tokens this kind adds around the context."""
        return self.backbone.max_positions - 4

    def row_columns(self, fields: Mapping[str, str]) -> int:
        return super().row_columns(fields) + 3  # and the special tokens this kind adds


class EncoderClassifier(_Bidirectional):
    """Frozen encoder + soft prompt + a trainable linear head on the pooled output.

    `pooling` is `mean` (over every non-padding position, prompt included: how sentence encoders such as
    MiniLM were trained) or `cls` (the first token's state).

    Examples:
        >>> model = EncoderClassifier(backbone, prompt, Template.parse("[soft:20] {text} {label}"),
        ...                           ["negative", "positive"])   # doctest: +SKIP
        >>> model.class_scores(model.make_batch([{"text": "Great fun."}]))   # doctest: +SKIP
        tensor([[-0.7, 1.3]])
    """

    def __init__(self, backbone: Backbone, prompt: SoftPrompt, template: Template, labels: Sequence[str], *,
                 max_length: int = 128, pooling: str = "mean", head: nn.Linear | None = None) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"--pooling {pooling!r}: choose {' or '.join(POOLINGS)}")
        super().__init__(backbone, prompt, template, None, max_length=max_length)
        self._labels = tuple(labels)
        if len(self._labels) < 2:
            raise ConfigError(f"classification needs at least 2 labels, got {list(self._labels)}")
        self.task = TaskType.CLASSIFICATION
        self.pooling = pooling
        self.head = head if head is not None else nn.Linear(backbone.hidden_size, len(self._labels))
        self.head.to(device=backbone.device, dtype=torch.float32)
        if self.head.out_features != len(self._labels) or self.head.in_features != backbone.hidden_size:
            raise ConfigError(f"head of shape {tuple(self.head.weight.shape)} does not fit {len(self._labels)} labels "
                              f"x hidden size {backbone.hidden_size}")

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    def _classification_batch(self, examples, label_field) -> dict[str, torch.Tensor]:
        tok = self.backbone.tokenizer
        rows = [_wrap(self.encoder.encode(ex, reserve=2), [tok.cls_token_id], [tok.sep_token_id]) for ex in examples]
        return self._with_targets(examples, label_field, left_pad(rows, self.encoder.pad_id))

    def pooled(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, d) fp32 sentence vectors."""
        hidden, _ = self.hidden(batch)
        hidden = hidden.float()
        mask = batch["attention_mask"]
        if self.pooling == "cls":  # rows are left-padded: [CLS] sits at each row's first real column
            first = (mask.shape[1] - mask.sum(dim=1)).long()
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)

    def class_scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.pooled(batch))

    def word_scores(self, batch):
        raise ConfigError(f"backbone '{self.backbone.name}' classifies with a head, not label words")

    def with_prompt(self, prompt: SoftPrompt) -> "EncoderClassifier":
        return EncoderClassifier(self.backbone, prompt, self.template, self.labels, max_length=self.max_length,
                                 pooling=self.pooling, head=self.head)

    def file_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().file_tensors(), **head_tensors(self.head)}

    def file_metadata(self) -> dict[str, Any]:
        return {**super().file_metadata(), "head": {"kind": "linear", "pooling": self.pooling, "labels": list(self._labels),
                         "params": sum(p.numel() for p in self.head.parameters())}}


class MaskedLMPromptedModel(_Bidirectional):
    """Label words scored at a `[MASK]` where the template puts `{label}`: `[CLS] context [MASK] [SEP]`."""

    def __init__(self, backbone: Backbone, prompt: SoftPrompt, template: Template, verbalizer: Verbalizer | None,
                 *, max_length: int = 128) -> None:
        if verbalizer is None:
            raise ConfigError(f"backbone '{backbone.name}' is a masked LM: it classifies (--task classification); "
                              f"generation needs a causal LM or an encoder-decoder")
        if backbone.tokenizer.mask_token_id is None:
            raise ConfigError(f"backbone '{backbone.name}': its tokenizer has no mask token")
        super().__init__(backbone, prompt, template, verbalizer, max_length=max_length)
        for (label, word), ids in zip(((verbalizer.labels[c], w) for c, w in verbalizer.flat_words()), self.word_ids):
            if len(ids) != 1:
                raise ConfigError(f"label word '{word}' of label '{label}' is {len(ids)} tokens for '{backbone.name}'; "
                                  f"a [MASK] scores one token: choose one-token words with --label-words")

    def _classification_batch(self, examples, label_field) -> dict[str, torch.Tensor]:
        tok = self.backbone.tokenizer
        rows = [_wrap(self.encoder.encode(ex, reserve=3), [tok.cls_token_id], [tok.mask_token_id, tok.sep_token_id])
                for ex in examples]
        return self._with_targets(examples, label_field, left_pad(rows, self.encoder.pad_id))

    def word_scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        hidden, _ = self.hidden(batch)
        words = same_words_per_row(hidden.shape[0], self.word_ids)
        return label_word_scores(self.backbone, hidden[:, -2], words).view(-1, len(self.word_ids))  # [MASK] column


class Seq2SeqPromptedModel(_Bidirectional):
    """Encoder input `context </s>` with the soft prompt placed in it; the decoder scores or generates."""

    def _encoder_rows(self, examples, reserve: int = 0) -> list[Encoded]:
        eos = self.backbone.tokenizer.eos_token_id
        tail = [eos] if eos is not None else []
        return [_wrap(self.encoder.encode(ex, reserve=reserve + len(tail)), [], tail) for ex in examples]

    def _classification_batch(self, examples, label_field) -> dict[str, torch.Tensor]:
        batch = right_pad(self._encoder_rows(examples), self.encoder.pad_id)
        return self._with_targets(examples, label_field, batch)

    def _generation_batch(self, examples, label_field) -> dict[str, torch.Tensor]:
        batch = right_pad(self._encoder_rows(examples), self.encoder.pad_id)
        if examples and label_field is not None and label_field in examples[0]:
            eos = self.backbone.tokenizer.eos_token_id
            targets = [self.encoder.answer_ids(str(ex[label_field]))[: self.max_length // 2] + [eos] for ex in examples]
            labels = torch.full((len(targets), max(map(len, targets))), -100, dtype=torch.long)
            for row, ids in enumerate(targets):
                labels[row, :len(ids)] = torch.tensor(ids)
            batch["labels"] = labels
        return batch

    def _decoder_plan(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced decoder inputs (W, K) [start, w_1 .. w_{n-1}] and targets (W, K), -1 where unused."""
        k = self.max_word_tokens
        start, pad = self.backbone.decoder_start_token_id, self.encoder.pad_id
        inputs = torch.full((len(self.word_ids), k), pad, dtype=torch.long)
        targets = torch.full((len(self.word_ids), k), -1, dtype=torch.long)
        for w, ids in enumerate(self.word_ids):
            inputs[w, :len(ids)] = torch.tensor([start] + ids[:-1])
            targets[w, :len(ids)] = torch.tensor(ids)
        return inputs.to(device), targets.to(device)

    def word_scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Log-likelihood of every label word as the decoder's whole answer: (B, W)."""
        hidden, _ = self.hidden(batch)                                    # encoder states (B, T, d)
        rows, words = hidden.shape[0], len(self.word_ids)
        inputs, targets = self._decoder_plan(hidden.device)
        with self._autocast():
            logits = self.backbone.decoder_logits(hidden.repeat_interleave(words, dim=0),
                                                  batch["attention_mask"].repeat_interleave(words, dim=0),
                                                  inputs.repeat(rows, 1))  # (B*W, K, V)
        log_probs = torch.log_softmax(logits.float(), dim=-1).view(rows, words, *logits.shape[1:])
        return token_log_likelihood(log_probs, targets)

    def generation_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The decoder's own mean negative log-likelihood of the target tokens (teacher-forced)."""
        with self._autocast():
            out = self.backbone.model(inputs_embeds=self.embed(batch), attention_mask=batch["attention_mask"],
                                      labels=batch["labels"], use_cache=False)
        return out.loss.float()

    @torch.no_grad()
    def generate(self, inputs: Sequence[str | Mapping[str, Any]], *, max_new_tokens: int = 32) -> list[str]:
        """Greedy answers for inputs (a string fills the template's single input field)."""
        fields = self.template.input_fields
        rows = [{fields[0]: x} if isinstance(x, str) else x for x in inputs]
        batch = {k: v.to(self.backbone.device) for k, v in
                 right_pad(self._encoder_rows(rows), self.encoder.pad_id).items()}
        with self._autocast():
            out = self.backbone.model.generate(inputs_embeds=self.embed(batch), attention_mask=batch["attention_mask"],
                                               max_new_tokens=max_new_tokens, do_sample=False)
        return [t.strip() for t in self.backbone.tokenizer.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def generate_one(self, row: Mapping[str, Any], *, max_new_tokens: int = 32,
                     stop: Sequence[str] = ()) -> tuple[str, str, int, int]:
        """Greedy answer for one row, cut at the first stop string: (text, finish reason `stop` or `length`,
        encoder tokens, generated tokens) -- what a server's completion reports."""
        encoded = self._encoder_rows([row])
        batch = {k: v.to(self.backbone.device) for k, v in right_pad(encoded, self.encoder.pad_id).items()}
        with self._autocast():
            out = self.backbone.model.generate(inputs_embeds=self.embed(batch), attention_mask=batch["attention_mask"],
                                               max_new_tokens=max_new_tokens, do_sample=False)
        special = set(self.backbone.tokenizer.all_special_ids)
        ids = [t for t in out[0].tolist() if t not in special]
        text = self.backbone.tokenizer.decode(ids, skip_special_tokens=True).strip()
        finish = "stop" if self.backbone.tokenizer.eos_token_id in out[0].tolist()[1:] else "length"
        cuts = [text.index(s) for s in stop if s and s in text]
        if cuts:
            text, finish = text[:min(cuts)], "stop"
        return text, finish, len(encoded[0].input_ids), len(ids)


def assemble_encoder(backbone: Backbone, prompt: SoftPrompt, template: Template, verbalizer: Verbalizer | None, *,
                     labels: Sequence[str] | None = None, max_length: int = 128, pooling: str = "mean",
                     head: nn.Linear | None = None) -> EncoderClassifier:
    """An encoder without a vocabulary head classifies through a trained head (the verbaliser is not used)."""
    if not labels:
        raise ConfigError(f"backbone '{backbone.name}' is an encoder without a vocabulary head: it classifies "
                          f"(--task classification) through a trained head")
    return EncoderClassifier(backbone, prompt, template, labels, max_length=max_length, pooling=pooling, head=head)


def assemble_masked_lm(backbone: Backbone, prompt: SoftPrompt, template: Template, verbalizer: Verbalizer | None, *,
                       max_length: int = 128, **_: Any) -> MaskedLMPromptedModel:
    return MaskedLMPromptedModel(backbone, prompt, template, verbalizer, max_length=max_length)


def assemble_seq2seq(backbone: Backbone, prompt: SoftPrompt, template: Template, verbalizer: Verbalizer | None, *,
                     max_length: int = 128, **_: Any) -> Seq2SeqPromptedModel:
    return Seq2SeqPromptedModel(backbone, prompt, template, verbalizer, max_length=max_length)


__all__ = ["EncoderClassifier", "MaskedLMPromptedModel", "Seq2SeqPromptedModel", "assemble_encoder",
           "assemble_masked_lm", "assemble_seq2seq", "right_pad"]
