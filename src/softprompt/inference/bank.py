"""One resident backbone, many prompts: a prompt bank and mixed-prompt batches.

Every prompt in a bank is checked against the backbone's fingerprint when it is added. A batch may mix rows of
different prompts (different lengths, placements, templates and verbalisers; classification and generation):
`inference.batch` runs them in one backbone pass, reusing each prefix prompt's cached keys/values. Each row's
result equals running its prompt alone.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..errors import ConfigError, SoftPromptError
from ..kinds.table import kind_of, load_prompted_model
from ..protocols import Backbone, CachesPromptPrefix, Capability, Prompted, TaskType
from .batch import Classification, Generation, Request
from .cache_budget import PromptCacheBudget
from .engine import run_in_groups


class UnknownPromptError(SoftPromptError, KeyError):
    """A request named a prompt that is not in the bank."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PromptBank:
    """Prompts by name on one frozen backbone.

    Examples:
        >>> bank = PromptBank(load_backbone("smollm2-135m"))                         # doctest: +SKIP
        >>> bank.add("sentiment", "runs/rt/prompt.safetensors")                        # doctest: +SKIP
        >>> bank.classify([("sentiment", {"text": "Great fun."}), ("topic", {"text": "Shares fell."})])  # doctest: +SKIP
    """

    def __init__(self, backbone: Backbone, *, cache_budget_bytes: int | None = None) -> None:
        """`cache_budget_bytes`: the most bytes the prompts' cached keys/values may hold together; the least
        recently used are dropped (and recomputed when next needed) above it. None: no limit."""
        kind_of(backbone).require(Capability.SERVE, f"--model {backbone.name}")
        self.backbone = backbone
        self.cache_budget = PromptCacheBudget(cache_budget_bytes)
        self._models: dict[str, Prompted] = {}
        self._lock = threading.Lock()

    # ---- contents ------------------------------------------------------------------------------------------
    def add(self, name: str, prompt: str | Path | Prompted) -> Prompted:
        """Add or replace a prompt (a file is verified against the backbone's fingerprint first)."""
        model = load_prompted_model(prompt, self.backbone) if isinstance(prompt, (str, Path)) else prompt
        if model.backbone is not self.backbone:
            raise ConfigError(f"prompt '{name}' is bound to another backbone object than this bank's")
        kind_of(model).require(Capability.SERVE, f"prompt '{name}'")
        model.eval()
        if isinstance(model, CachesPromptPrefix):  # a model with a reusable prefix cache shares the bank's budget
            model.cache_budget = self.cache_budget
            if model.cache_plan()[1] and self.cache_budget.has_room():
                with torch.no_grad():  # computed now, while there is room: its first rows do not wait for it
                    model.prompt_cache()
        with self._lock:  # a swap replaces the entry whole: requests already holding the old model finish on it
            old, self._models[name] = self._models.get(name), model
        if old is not None and old is not model:
            self.cache_budget.forget(old)
        return model

    def remove(self, name: str) -> None:
        with self._lock:
            model = self._models.pop(name, None)
        if model is None:
            raise UnknownPromptError(f"no prompt named '{name}'")
        self.cache_budget.forget(model)

    def get(self, name: str) -> Prompted:
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

    # ---- mixed-prompt batches -----------------------------------------------------------------------------
    def run(self, requests: Sequence[Request], *, max_rows: int = 32) -> list[Classification | Generation]:
        """Classification and generation rows of any prompts, mixed in batches of rows of similar length (at
        most `max_rows` each; see `inference.engine`); results in request order."""
        return run_in_groups(self.backbone, requests, max_rows=max_rows)

    def classify(self, requests: Sequence[tuple[str, Mapping[str, str] | str]]) -> list[Classification]:
        """Classify rows of possibly different prompts in one backbone pass; results in request order."""
        batch = []
        for name, inputs in requests:
            model = self.get(name)
            if model.task is not TaskType.CLASSIFICATION:
                raise ConfigError(f"prompt '{name}' is a generation prompt; use generate")
            batch.append(Request(model, inputs, "classify"))
        return self.run(batch)  # type: ignore[return-value]

    def generate(self, requests: Sequence[tuple[str, Mapping[str, str] | str]], **settings) -> list[Generation]:
        """Continue rows of possibly different prompts together; `settings` are `Request` fields
        (max_new_tokens, temperature, top_p, stop, seed)."""
        return self.run([Request(self.get(name), inputs, "generate", **settings)
                         for name, inputs in requests])  # type: ignore[return-value]

    @torch.no_grad()
    def ensemble(self, names: Sequence[str], rows: Sequence[Mapping[str, str] | str], *,
                 mode: str = "average") -> list[Classification]:
        """Several prompts of one task on each row, in one batched forward: `average` the class probabilities
        (scores are log of the mean probability) or `vote` (majority label; ties go to the higher mean)."""
        if mode not in ("average", "vote"):
            raise ConfigError(f"ensemble mode {mode!r}: use average or vote")
        if not names:
            raise ConfigError("an ensemble needs at least one prompt name")
        def labels_of(name: str) -> tuple[str, ...] | None:
            model = self.get(name)
            return model.labels if model.task is TaskType.CLASSIFICATION else None

        labels = labels_of(names[0])
        for name in names:
            if labels is None or labels_of(name) != labels:
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
