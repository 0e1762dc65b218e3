"""One resident backbone, many prompts: a prompt bank and mixed-prompt batches.

Every prompt in a bank is checked against the backbone's fingerprint when it is added. A batch may mix rows of
different prompts (different lengths, placements, templates and verbalisers): each row is encoded by its own
prompt's template, the prompts used by the batch are stacked into one table, each row's soft positions index
its own prompt's slice of it, and the backbone runs once. Each row's result equals running its prompt alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..backbones.base import Backbone
from ..errors import ConfigError, SoftPromptError
from ..formats import load_prompted_model
from ..model import PromptedModel, TaskType, backbone_autocast, place_soft_tokens
from ..template import Encoded, left_pad


class UnknownPromptError(SoftPromptError, KeyError):
    """A request named a prompt that is not in the bank."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Classification:
    label: str
    scores: dict[str, float]


class PromptBank:
    """Prompts by name on one frozen backbone.

    >>> bank = PromptBank(load_backbone("smollm2-135m"))                         # doctest: +SKIP
    >>> bank.add("sentiment", "runs/rt/prompt.safetensors")                        # doctest: +SKIP
    >>> bank.classify([("sentiment", {"text": "Great fun."}), ("topic", {"text": "Shares fell."})])  # doctest: +SKIP
    """

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self._models: dict[str, PromptedModel] = {}
        self._lock = threading.Lock()

    # ---- contents ------------------------------------------------------------------------------------------
    def add(self, name: str, prompt: str | Path | PromptedModel) -> PromptedModel:
        """Add or replace a prompt (a file is verified against the backbone's fingerprint first)."""
        model = prompt if isinstance(prompt, PromptedModel) else load_prompted_model(prompt, self.backbone)
        if model.backbone is not self.backbone:
            raise ConfigError(f"prompt '{name}' is bound to another backbone object than this bank's")
        model.eval()
        with self._lock:  # a swap replaces the entry whole: requests already holding the old model finish on it
            self._models[name] = model
        return model

    def remove(self, name: str) -> None:
        with self._lock:
            if self._models.pop(name, None) is None:
                raise UnknownPromptError(f"no prompt named '{name}'")

    def get(self, name: str) -> PromptedModel:
        with self._lock:
            model = self._models.get(name)
        if model is None:
            raise UnknownPromptError(f"no prompt named '{name}'; known: {sorted(self._models)}")
        return model

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._models

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    # ---- mixed-prompt classification -----------------------------------------------------------------------
    @torch.no_grad()
    def classify(self, requests: Sequence[tuple[str, Mapping[str, str] | str]]) -> list[Classification]:
        """Classify rows of possibly different prompts in one backbone pass; results in request order."""
        models = [self.get(name) for name, _ in requests]
        for (name, _), model in zip(requests, models):
            if model.task is not TaskType.CLASSIFICATION:
                raise ConfigError(f"prompt '{name}' is a generation prompt; use generate")
        rows = [{m.template.input_fields[0]: r} if isinstance(r, str) else r for (_, r), m in zip(requests, models)]
        # One table of prompt vectors: each distinct model's rows index its own slice.
        distinct: dict[int, tuple[PromptedModel, int]] = {}
        offset = 0
        for model in models:
            if id(model) not in distinct:
                distinct[id(model)] = (model, offset)
                offset += model.prompt.num_virtual_tokens
        table = torch.cat([m.prompt() for m, _ in distinct.values()]) if offset else None   # (sum n, d)

        # Every row holds its context plus, for multi-token words, one extra row per word (as PromptedModel does).
        encoded: list[Encoded] = []
        spans: list[tuple[int, int, PromptedModel]] = []  # (first row, number of rows, model) per request
        for row, model in zip(rows, models):
            shift = distinct[id(model)][1]
            ctx = model.encoder.encode(row, reserve=model.max_word_tokens - 1)
            soft = [s + shift if s >= 0 else -1 for s in ctx.soft_index]
            if model.max_word_tokens == 1:
                items = [Encoded(ctx.input_ids, soft)]
            else:
                items = [Encoded(ctx.input_ids + w[:-1], soft + [-1] * (len(w) - 1)) for w in model.word_ids]
            spans.append((len(encoded), len(items), model))
            encoded += items
        padded = left_pad(encoded, self.backbone.tokenizer.pad_token_id)
        batch = {k: v.to(self.backbone.device) for k, v in padded.items()}
        hidden = self._hidden(batch, table)                                            # (R, T, d)

        results = []
        for first, count, model in spans:
            word_scores = model.word_scores_from_hidden(hidden[first:first + count])      # (1, W)
            scores = model.verbalizer.class_scores(word_scores.float())[0]
            labels = model.verbalizer.labels
            results.append(Classification(labels[int(scores.argmax())],
                                          {label: float(s) for label, s in zip(labels, scores)}))
        return results

    @torch.no_grad()
    def ensemble(self, names: Sequence[str], rows: Sequence[Mapping[str, str] | str], *,
                 mode: str = "average") -> list[Classification]:
        """Several prompts of one task on each row, in one batched forward: `average` the class probabilities
        (scores are log of the mean probability) or `vote` (majority label; ties go to the higher mean)."""
        if mode not in ("average", "vote"):
            raise ConfigError(f"ensemble mode {mode!r}: use average or vote")
        if not names:
            raise ConfigError("an ensemble needs at least one prompt name")
        first = self.get(names[0]).verbalizer
        labels = first.labels if first else None
        for name in names:
            model = self.get(name)
            if model.verbalizer is None or model.verbalizer.labels != labels:
                raise ConfigError(f"prompt '{name}' does not share the label set {list(labels or [])} of "
                                  f"'{names[0]}'; an ensemble needs prompts of one task")
        results = self.classify([(name, row) for row in rows for name in names])
        out = []
        for start in range(0, len(results), len(names)):
            members = results[start:start + len(names)]
            probs = torch.tensor([[m.scores[label] for label in labels] for m in members]).softmax(-1)
            mean = probs.mean(0)                                                          # (C,)
            if mode == "vote":
                votes = torch.bincount(probs.argmax(-1), minlength=len(labels)).float()
                best = int((votes + mean * 0.5).argmax())  # mean < 1 only breaks ties
            else:
                best = int(mean.argmax())
            out.append(Classification(labels[best], {label: float(torch.log(p)) for label, p in zip(labels, mean)}))
        return out

    def _hidden(self, batch: Mapping[str, torch.Tensor], table: torch.Tensor | None) -> torch.Tensor:
        tokens = self.backbone.embed(batch["input_ids"])                                # (R, T, d)
        if table is not None:
            tokens = place_soft_tokens(tokens, batch["soft_index"], table)
        with backbone_autocast(self.backbone):
            hidden, _ = self.backbone.hidden_states(tokens, batch["attention_mask"], batch["position_ids"])
        return hidden
