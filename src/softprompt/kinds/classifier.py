"""Prompted classifiers whose inputs are not text (images, audio): the shared part of their `Prompted`.

A text model places its prompt with a template; here an `InputSpec` names the row field the model reads
(`image`, `audio`) and where the soft tokens go; its `source` is what the prompt file records as the
template. Rows are dicts such as
`{"image": tensor (C, H, W) in [0, 1], "label": "sandal"}`. Everything else is the text path's: the same
`SoftPrompt`, prompt file (the head's tensors beside the prompt's), training loop and `evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..formats import Pretrained
from ..protocols import TaskType


@dataclass(frozen=True)
class InputSpec:
    """What a non-text prompted model reads: `source` is stored as the prompt file's template, e.g.
    `"[soft:10] {image}"`."""

    source: str
    input_fields: tuple[str, ...]
    num_virtual_tokens: int = 0


class PromptedClassifier(Pretrained, nn.Module):
    """Base class: a frozen backbone, a soft prompt, a label set; subclasses turn rows into a batch
    (`inputs`) and a batch into class scores (`class_scores`)."""

    task = TaskType.CLASSIFICATION

    def __init__(self, backbone: Any, prompt: nn.Module, spec: InputSpec, labels: Sequence[str]) -> None:
        super().__init__()
        if len(labels) < 2:
            raise ConfigError(f"classification needs at least 2 labels, got {list(labels)}")
        self.backbone = backbone
        self.prompt = prompt
        self.spec = spec
        self._labels = tuple(str(label) for label in labels)

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def max_length(self) -> int:
        return 0  # no text tokens

    @property
    def input_fields(self) -> tuple[str, ...]:
        return self.spec.input_fields

    @property
    def template_source(self) -> str:
        return self.spec.source

    def file_metadata(self) -> dict[str, Any]:
        """Subclasses add their head and options to this."""
        return {"template": self.spec.source, "verbalizer": None, "labels": list(self._labels)}

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """Subclasses add their head's tensors to this."""
        return self.prompt.to_tensors()

    def inputs(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def class_scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def make_batch(self, rows: Sequence[Mapping[str, Any]], label_field: str | None = "label") -> dict[str, torch.Tensor]:
        batch = self.inputs(rows)
        if rows and label_field is not None and label_field in rows[0]:
            try:
                batch["targets"] = torch.tensor([self._labels.index(str(r[label_field])) for r in rows])
            except ValueError:
                bad = next(str(r[label_field]) for r in rows if str(r[label_field]) not in self._labels)
                raise ConfigError(f"label {bad!r} is not one of this model's labels {list(self._labels)}") from None
        return batch

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        scores = self.class_scores(batch)
        loss = F.cross_entropy(scores.float(), batch["targets"])
        return loss, {"accuracy": (scores.argmax(-1) == batch["targets"]).float().mean().item()}

    @torch.no_grad()
    def classify(self, inputs: Sequence[Any], batch_size: int = 64) -> list[str]:
        """Predicted label per input (a bare tensor fills the spec's single input field)."""
        field = self.spec.input_fields[0]
        rows = [x if isinstance(x, Mapping) else {field: x} for x in inputs]
        out: list[str] = []
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(self.backbone.device) for k, v in self.make_batch(rows[start:start + batch_size],
                                                                               None).items()}
            out += [self._labels[i] for i in self.class_scores(batch).argmax(-1).tolist()]
        return out


def linear_head(tensors: Mapping[str, torch.Tensor], prefix: str = "head.") -> nn.Linear | None:
    """A saved linear head (`head.weight`, `head.bias`) rebuilt, or None when the file has none."""
    if f"{prefix}weight" not in tensors:
        return None
    weight = tensors[f"{prefix}weight"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(tensors[f"{prefix}bias"])
    return head


def head_tensors(head: nn.Linear, prefix: str = "head.") -> dict[str, torch.Tensor]:
    return {f"{prefix}weight": head.weight.detach().to("cpu", torch.float32).contiguous(),
            f"{prefix}bias": head.bias.detach().to("cpu", torch.float32).contiguous()}
