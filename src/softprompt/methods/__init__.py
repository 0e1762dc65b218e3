"""The method table: the only place that maps a method name to what it trains, stores and needs.

A method is how a run adapts the frozen backbone to a task. The prompt methods (`prompt`, `residual`, `deep`,
`dept`, `multitask`) each live in their own module here with their prompt module; the weight-training baselines
(`lora`, `adapter`, `full`, `probe`, `zeroshot`) are built by `training.baselines` and compared with them by
`softprompt compare`. `METHODS` says, for each method, what it trains, the tensors its prompt file holds, how to
start a fresh prompt and rebuild one from a file, which parameters train at their own learning rate, what it asks
of a backbone's kind (`Capability`) and which options are its own. Every other module asks this table; none
branches on a method's name.

Adding a prompt method: a module here with its prompt module (an `nn.Module` with `num_virtual_tokens`,
`num_input_tokens`, `hidden_size`, `forward()` -> the input-level vectors and `to_tensors()`), a `start` and a
`from_tensors`, then one entry below. The tests parametrised over `METHODS` check it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..declare import OptionGroup
from ..errors import ConfigError, PromptFileError
from ..protocols import Capability
from . import deep, dept, multitask, plain, residual

DEFAULT_NUM_VIRTUAL_TOKENS = 20


class MethodName(str, Enum):
    """Every method softprompt trains or compares (`train --method` takes the prompt methods)."""

    PROMPT = "prompt"        # soft tokens in the input sequence
    RESIDUAL = "residual"    # a prompt trained through a residual MLP, saved folded into plain vectors
    DEEP = "deep"            # key/value prefixes at every layer (prefix tuning / P-tuning v2)
    DEPT = "dept"            # a shorter prompt + a low-rank offset of the text tokens' input embeddings (DePT)
    MULTITASK = "multitask"  # a shared prompt + per-task low-rank factors (MPT stage 1)
    LORA = "lora"
    ADAPTER = "adapter"
    FULL = "full"
    PROBE = "probe"
    ZEROSHOT = "zeroshot"


@dataclass(frozen=True)
class Shape:
    """The backbone dimensions a method's parameter count depends on."""

    hidden: int
    layers: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class Method:
    """One method: what it trains, what its file holds, how its prompt starts and loads, and what it needs."""

    name: MethodName
    summary: str
    default_lr: float                          # suits the method at this scale (its literature); --lr overrides
    needs: frozenset[Capability] = frozenset()  # asked of the backbone's kind
    options: frozenset[str] = frozenset()       # flat names of the options only it reads (refused elsewhere)
    option_group: OptionGroup | None = None     # its options' declarations (`config.dept`, --dept-*)
    trains_weights: bool = False                # trains backbone weights (fp32 master copies; compare's baselines)
    # Prompt methods (None for the baselines, which write their own artefact and no prompt file):
    file_method: MethodName | None = None      # the `method` its prompt file records (residual: prompt, folded)
    tensors: tuple[str, ...] = ()               # tensors its prompt file holds
    more_tensors: bool = False                  # the file holds more of its own (multitask: each task's factors)
    in_input: bool = True                       # its virtual tokens sit in the input (deep: in every layer)
    many_tasks: bool = False                    # trains on several datasets at once (--tasks), not on --data
    default_tokens: int = DEFAULT_NUM_VIRTUAL_TOKENS
    start: Callable[..., nn.Module] | None = None        # (PromptStart) -> a fresh (or transferred) prompt
    from_tensors: Callable[[Mapping[str, torch.Tensor], int], nn.Module] | None = None
    own_rates: Mapping[str, str] = field(default_factory=dict)  # parameter name's last part -> option of its lr
    parameters: Callable[[Any, Shape, int], int] | None = None  # (config, shape, n virtual tokens) -> values trained
    continues_as: frozenset[MethodName] = frozenset()  # `--init-from` its file starts runs of these methods
    adapt: Callable[..., nn.Module] | None = None  # (config, tensors, device) -> the new run's prompt (MPT stage 2)
    card: Callable[[Any], str] | None = None   # what the model card adds to the method line

    @property
    def writes_prompt(self) -> bool:
        return self.file_method is not None


@dataclass(frozen=True)
class PromptStart:
    """What a prompt method starts from: the run's options, the backbone, the initial vectors (n, d) fp32 on the
    CPU and their generator, and `tensors` when the run starts from another task's file (`--init-from`)."""

    config: Any            # the run's TrainConfig
    backbone: Any
    vectors: torch.Tensor
    generator: torch.Generator
    tensors: Mapping[str, torch.Tensor] | None = None


_BASELINES = {Capability.BASELINES}

METHODS: dict[MethodName, Method] = {m.name: m for m in (
    Method(MethodName.PROMPT, "soft tokens in the input sequence", 3e-2, file_method=MethodName.PROMPT,
           tensors=plain.TENSORS, start=plain.start, from_tensors=plain.from_tensors,
           parameters=plain.parameters, continues_as=frozenset({MethodName.PROMPT, MethodName.RESIDUAL})),
    Method(MethodName.RESIDUAL, "a prompt trained through a residual MLP, saved folded into plain vectors", 3e-2,
           needs=frozenset({Capability.RESIDUAL}), options=frozenset({"residual_bottleneck", "residual_dropout"}),
           option_group=residual.OPTIONS,
           file_method=MethodName.PROMPT, tensors=plain.TENSORS, start=residual.start,
           from_tensors=plain.from_tensors, parameters=residual.parameters, card=residual.card),
    Method(MethodName.DEEP, "trainable key/value prefixes at every layer (prefix tuning / P-tuning v2)", 1e-2,
           needs=frozenset({Capability.DEEP}), options=frozenset({"deep_reparam"}),
           option_group=deep.OPTIONS, file_method=MethodName.DEEP,
           tensors=deep.TENSORS, in_input=False, start=deep.start, from_tensors=deep.from_tensors,
           parameters=deep.parameters, continues_as=frozenset({MethodName.DEEP})),
    Method(MethodName.DEPT, "a shorter prompt + a low-rank offset of the text tokens' embeddings (DePT)", 3e-2,
           needs=frozenset({Capability.DEPT}), options=frozenset({"dept_rank", "dept_lr"}), option_group=dept.OPTIONS,
           file_method=MethodName.DEPT, tensors=dept.TENSORS, default_tokens=dept.DEFAULT_TOKENS, start=dept.start,
           from_tensors=dept.from_tensors, own_rates={name: "dept_lr" for name in dept.OFFSET_PARAMETERS},
           parameters=dept.parameters, continues_as=frozenset({MethodName.DEPT}), card=dept.card),
    Method(MethodName.MULTITASK, "a shared prompt + per-task low-rank factors over --tasks (MPT stage 1)", 3e-2,
           needs=frozenset({Capability.MULTITASK}),
           options=frozenset({"tasks", "mpt_teachers", "mpt_distill_weight", "mpt_distill_temperature"}),
           option_group=multitask.OPTIONS,  # mpt_rank and mpt_train_shared: stage 2, a --method prompt run
           file_method=MethodName.MULTITASK, tensors=multitask.TENSORS, more_tensors=True, many_tasks=True,
           from_tensors=multitask.from_tensors, parameters=plain.parameters,
           continues_as=frozenset({MethodName.PROMPT}), adapt=multitask.adapt),
    Method(MethodName.LORA, "low-rank updates of the attention query/value projections (PEFT)", 1e-3,
           needs=frozenset(_BASELINES), trains_weights=True),
    Method(MethodName.ADAPTER, "bottleneck adapters after the attention and feed-forward blocks", 1e-3,
           needs=frozenset(_BASELINES), trains_weights=True),
    Method(MethodName.FULL, "every backbone weight", 2e-5, needs=frozenset(_BASELINES), trains_weights=True),
    Method(MethodName.PROBE, "a linear classifier on the frozen last hidden state", 1e-2,
           needs=frozenset(_BASELINES)),
    Method(MethodName.ZEROSHOT, "the hand-written template, nothing trained", 0.0, needs=frozenset(_BASELINES)),
)}

TRAIN_METHODS = tuple(name for name, method in METHODS.items() if method.writes_prompt)


def method_named(name: str, flag: str = "--method", among: tuple[MethodName, ...] = tuple(MethodName)) -> Method:
    """The entry of `name`, or one line naming the flag and the choices."""
    try:
        chosen = MethodName(name)
    except ValueError:
        chosen = None
    if chosen not in among:
        raise ConfigError(f"{flag} {name!r}: choose one of {', '.join(m.value for m in among)}")
    return METHODS[chosen]


def file_method(meta: Mapping[str, Any], path: Any) -> Method:
    """The entry of the method a prompt file's metadata records (files before methods existed: prompt)."""
    name = meta.get("method", "prompt")
    method = METHODS.get(MethodName(name)) if name in {m.value for m in MethodName} else None
    if method is None or method.file_method is not method.name:
        raise PromptFileError(f"{path}: damaged metadata (method {name!r} is not a prompt file's method)")
    return method


__all__ = ["DEFAULT_NUM_VIRTUAL_TOKENS", "METHODS", "TRAIN_METHODS", "Method", "MethodName", "PromptStart", "Shape",
           "file_method", "method_named"]
