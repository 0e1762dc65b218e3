"""The weight-training baselines `softprompt compare` measures prompts against, trained by the same loop on the
same verbaliser loss.

`build_method` takes a freshly loaded backbone (some baselines change it in place) and returns a `Built`: the
model to train -- a `PromptedModel` whose trainable parameters are the method's -- and how to write its
task-specific artefact. The template and verbaliser are the task's (zero soft tokens unless the method is a
prompt), so the methods differ only in what they train. A prompt method (`METHODS[name].writes_prompt`) is built
as `train` builds it; each baseline by its builder below:

- `lora`: low-rank updates of the attention query/value projections through PEFT (`inject_adapter_in_model`).
- `adapter`: bottleneck adapters (Houlsby et al. 2019: after the attention output projection and after the
  feed-forward block, inside the residual branch; `pfeiffer`: after the feed-forward block only).
- `full`: every backbone weight.
- `probe`: a linear classifier on the frozen last hidden state at the answer position.
- `zeroshot`: the hand-written template, nothing trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from torch import nn

from ..config import TrainConfig
from ..data import TaskData
from ..errors import ConfigError
from ..formats import atomic_write, save_prompt
from ..kinds.table import build_prompted_model, kind_of
from ..kinds.causal_lm.model import PromptedModel
from ..methods import MethodName, method_named
from ..prompts import SoftPrompt
from ..protocols import Backbone, TaskType
from ..template import Template, left_pad
from ..verbalizer import Verbalizer


@dataclass
class Built:
    """A method ready to train: its model, how to write its artefact, and whether it trains at all."""

    name: MethodName
    model: PromptedModel
    save: Callable[[Path, PromptedModel, dict], Path] | None   # None: nothing to write (zero-shot)
    trains: bool = True


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _save_trainable(name: str) -> Callable[[Path, PromptedModel, dict], Path]:
    """Write the method's trainable tensors (its whole task-specific artefact) as safetensors."""
    def write(folder: Path, model: PromptedModel, extra: dict) -> Path:
        tensors = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}
        path = folder / f"{name}.safetensors"
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"method": name}))
    return write


def _plain_model(backbone: Backbone, task: TaskData, config: TrainConfig) -> PromptedModel:
    body = config.template or task.default_template
    if "[soft:" in body:
        raise ConfigError("baselines use the task's template without [soft:N] markers")
    verbalizer = Verbalizer.from_spec(task.labels, config.label_words) if task.labels else None
    return PromptedModel.zero_shot(backbone, body, verbalizer, max_length=config.max_length)


def _attention_output(layer: nn.Module) -> nn.Module:
    for path in ("self_attn.o_proj", "attn.c_proj"):
        module = layer
        try:
            for part in path.split("."):
                module = getattr(module, part)
            return module
        except AttributeError:
            continue
    raise ConfigError("no attention output projection (self_attn.o_proj or attn.c_proj) in a decoder layer")


class Bottleneck(nn.Module):
    """x -> x + W_up(act(W_down(x))), with W_up starting at zero (the adapter starts as the identity)."""

    def __init__(self, hidden_size: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.nn.functional.gelu(self.down(x.to(self.down.weight.dtype)))).to(x.dtype)


class BottleneckAdapters(nn.Module):
    """Adapters hooked onto sublayer outputs of a frozen decoder (their parameters live here, not in it)."""

    def __init__(self, backbone: Backbone, bottleneck: int = 64, placement: str = "houlsby") -> None:
        super().__init__()
        if placement not in ("houlsby", "pfeiffer"):
            raise ConfigError(f"adapter placement {placement!r}: use houlsby or pfeiffer")
        self.adapters = nn.ModuleList()
        self._handles = []
        for layer in backbone.decoder_layers():
            targets = [layer.mlp] if placement == "pfeiffer" else [_attention_output(layer), layer.mlp]
            for target in targets:
                adapter = Bottleneck(backbone.hidden_size, bottleneck).to(backbone.device)
                self.adapters.append(adapter)
                self._handles.append(target.register_forward_hook(lambda _m, _i, out, a=adapter: a(out)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class LinearProbe(PromptedModel):
    """Class scores from a linear layer on the frozen last hidden state at the answer position."""

    def __init__(self, backbone: Backbone, template: Template, labels: tuple[str, ...], *, max_length: int) -> None:
        empty = SoftPrompt(torch.zeros(0, backbone.hidden_size, device=backbone.device))
        super().__init__(backbone, empty, template, None, max_length=max_length)
        self._labels = tuple(labels)
        self.head = nn.Linear(backbone.hidden_size, len(labels)).to(backbone.device)
        self.task = TaskType.CLASSIFICATION

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    def class_scores(self, batch) -> torch.Tensor:
        hidden, _ = self.hidden(batch)
        return self.head(hidden[:, -1].float())

    def _classification_batch(self, examples, label_field):
        batch = left_pad([self.encoder.encode(ex) for ex in examples], self.encoder.pad_id)
        return self._with_targets(examples, label_field, batch)


def merge_lora(module: nn.Module) -> int:
    """Fold every PEFT LoRA update into its base weight and put the plain layer back; returns how many merged.

    After this the model is the bare architecture with changed weights: LoRA's "no inference cost" claim, measured.
    """
    from peft.tuners.lora import LoraLayer  # start-up time: baselines only

    merged = 0
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
                merged += 1
    return merged


def _zeroshot(config: TrainConfig, backbone: Backbone, task: TaskData, options: dict) -> Built:
    return Built(MethodName.ZEROSHOT, _plain_model(backbone, task, config), None, trains=False)


def _probe(config: TrainConfig, backbone: Backbone, task: TaskData, options: dict) -> Built:
    template = _plain_model(backbone, task, config).template
    return Built(MethodName.PROBE, LinearProbe(backbone, template, task.labels, max_length=config.max_length),
                 _save_trainable("probe"))


def _lora(config: TrainConfig, backbone: Backbone, task: TaskData, options: dict) -> Built:
    from peft import LoraConfig, inject_adapter_in_model  # start-up time: baselines only

    model = _plain_model(backbone, task, config)
    layer = backbone.decoder_layers()[0]
    targets = ["q_proj", "v_proj"] if hasattr(layer, "self_attn") else ["c_attn"]
    rank = options["lora_rank"]
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets),
                            backbone.model)
    for param_name, param in backbone.model.named_parameters():
        param.requires_grad_("lora_" in param_name)
    return Built(MethodName.LORA, model, _save_trainable("lora"))


def _adapter(config: TrainConfig, backbone: Backbone, task: TaskData, options: dict) -> Built:
    model = _plain_model(backbone, task, config)
    model.add_module("adapters", BottleneckAdapters(backbone, options["adapter_size"], options["adapter_placement"]))
    return Built(MethodName.ADAPTER, model, _save_trainable("adapter"))


def _full(config: TrainConfig, backbone: Backbone, task: TaskData, options: dict) -> Built:
    model = _plain_model(backbone, task, config)
    for param in backbone.model.parameters():
        param.requires_grad_(True)
    return Built(MethodName.FULL, model, _save_trainable("full"))


# Each baseline's builder; the prompt methods are built from the method table (`METHODS`).
BASELINES: dict[MethodName, Callable[..., Built]] = {
    MethodName.ZEROSHOT: _zeroshot, MethodName.PROBE: _probe, MethodName.LORA: _lora, MethodName.ADAPTER: _adapter,
    MethodName.FULL: _full}


def build_method(name: MethodName | str, config: TrainConfig, backbone: Backbone, task: TaskData, *,
                 lora_rank: int = 8, adapter_size: int = 64, adapter_placement: str = "houlsby") -> Built:
    """The model `name` trains on `backbone` (changed in place for lora/adapter/full: load a fresh one per method)."""
    method = method_named(getattr(name, "value", name), "method")
    if task.labels is None:
        raise ConfigError("method comparisons are for classification tasks (a label set and a verbaliser)")
    if method.writes_prompt:
        model = build_prompted_model(config.replace(method=method.name), backbone, task)
        return Built(method.name, model, lambda folder, m, extra: save_prompt(folder / "prompt.safetensors", m, **extra))
    for capability in method.needs:
        kind_of(backbone).require(capability, f"--methods {method.name.value}")
    options = {"lora_rank": lora_rank, "adapter_size": adapter_size, "adapter_placement": adapter_placement}
    return BASELINES[method.name](config, backbone, task, options)
