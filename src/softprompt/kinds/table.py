"""The kind table: the only place that maps a backbone kind to its code and its capabilities.

Each kind lives in its own folder (`causal_lm/`, `encoder/`, `vision/`, `clip/`, `speech/`) with its frozen
backbone and its prompted model. `KINDS` says, for each kind, how to recognise its config, load its weights,
build a prompted model for a run, rebuild one from a prompt file, and what it can do beyond training and
evaluation. Every CLI verb and endpoint asks this table; a kind that cannot do something is refused in one line
that names the kind and what it can do instead (`CapabilityError`: CLI exit 2, HTTP 422).

Adding a kind: a folder with `backbone.py` (a `FrozenBackbone` with `detect` and `load`) and a prompted model
implementing `protocols.Prompted`, then one entry below. The tests parametrised over `KINDS` check it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..config import TrainConfig, option_field
from ..data import TaskData
from ..errors import ConfigError, PromptFileError, SoftPromptError
from ..formats import check_compatible, read_prompt_tensors
from ..frozen import FrozenBackbone
from ..methods import METHODS
from ..declare import OptionGroup
from ..protocols import Backbone, BackboneKind, Capability, Prompted, TaskType
from .causal_lm import backbone as causal_lm_backbone
from .causal_lm.model import assemble as assemble_causal_lm
from .clip import backbone as clip_backbone
from .clip.coop import build_coop_model, coop_model_from_file
from .encoder import backbone as encoder_backbone
from .encoder.models import assemble_encoder, assemble_masked_lm, assemble_seq2seq
from .options import KIND_OPTIONS
from .text import Assemble, build_text_model, text_model_from_file
from .vision import backbone as vit_backbone
from .vision.vpt import build_vision_model, vision_model_from_file
from .speech import backbone as whisper_backbone
from .speech.model import build_speech_model, speech_model_from_file

EVERY_KIND_CAN = "train, eval, predict and info"


class CapabilityError(ConfigError):
    """A kind was asked for something it cannot do (CLI exit 2, HTTP 422)."""


@dataclass(frozen=True)
class Kind:
    """One kind of backbone: how to recognise, load, build and read it, and what it can do."""

    name: BackboneKind
    summary: str                                                   # "causal LM (label words at the answer)"
    inputs: str                                                    # "text", "image" or "audio"
    detect: Callable[[Any], bool]                                  # transformers config -> is this kind?
    load: Callable[..., Backbone]                                  # (folder, name, *, dtype, device, load_in)
    build: Callable[[TrainConfig, Backbone, TaskData], Prompted]
    from_file: Callable[[Backbone, Mapping[str, torch.Tensor], Mapping[str, Any]], Prompted]
    capabilities: frozenset[Capability]
    assemble: Assemble | None = None                               # text kinds: (backbone, prompt, template, ...)
    options: OptionGroup | None = None                             # the options only it reads (its options.py)

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def require(self, capability: Capability, subject: str = "") -> None:
        """Refuse `capability` in one line naming the kind and what it can do instead."""
        if capability in self.capabilities:
            return
        extra = [c.value for c in Capability if c in self.capabilities]
        instead = EVERY_KIND_CAN + (f", {'; '.join(extra)}" if extra else "")
        who = f"{subject}: " if subject else ""
        raise CapabilityError(f"{who}a {self.name.value} backbone ({self.summary}) does not support "
                              f"{capability.value}; it can {instead}")


def _text_kind(name: BackboneKind, summary: str, detect, load, assemble: Assemble, capabilities,
               options: OptionGroup | None = None) -> Kind:
    return Kind(name, summary, "text", detect, load, partial(build_text_model, assemble=assemble),
                partial(text_model_from_file, assemble=assemble), frozenset(capabilities), assemble, options)


_TEXT = {Capability.SERVE, Capability.INIT_FROM, Capability.EXPLAIN, Capability.RESIDUAL, Capability.DEPT}

# Detection tries the entries in this order; a config that none claims is read as a causal LM.
KINDS: dict[BackboneKind, Kind] = {k.name: k for k in (
    Kind(BackboneKind.VISION, "ViT, visual prompt tuning with a linear head", "image", vit_backbone.detect,
         vit_backbone.load, build_vision_model, vision_model_from_file, frozenset(), options=KIND_OPTIONS["vpt"]),
    Kind(BackboneKind.CLIP, "CLIP, CoOp context in the class prompts", "image", clip_backbone.detect,
         clip_backbone.load, build_coop_model, coop_model_from_file, frozenset(), options=KIND_OPTIONS["coop"]),
    Kind(BackboneKind.SPEECH, "Whisper, prompts on the decoder input", "audio", whisper_backbone.detect,
         whisper_backbone.load, build_speech_model, speech_model_from_file, frozenset(),
         options=KIND_OPTIONS["whisper"]),
    _text_kind(BackboneKind.SEQ2SEQ, "encoder-decoder, the decoder scores or generates", encoder_backbone.detect_seq2seq,
               encoder_backbone.load_seq2seq, assemble_seq2seq, _TEXT | {Capability.GENERATE}),
    _text_kind(BackboneKind.MASKED_LM, "masked LM, label words at [MASK]", encoder_backbone.detect_masked_lm,
               encoder_backbone.load_masked_lm, assemble_masked_lm, _TEXT),
    _text_kind(BackboneKind.CAUSAL_LM, "causal LM, label words at the answer position", causal_lm_backbone.detect,
               causal_lm_backbone.load, assemble_causal_lm, set(Capability)),
    _text_kind(BackboneKind.ENCODER, "encoder with a trained classification head", encoder_backbone.detect_encoder,
               encoder_backbone.load_encoder, assemble_encoder, _TEXT, options=KIND_OPTIONS["encoder"]),
)}


def detect_kind(config: Any) -> BackboneKind:
    """Which kind a transformers config describes (the first entry of `KINDS` that claims it)."""
    return next((name for name, kind in KINDS.items() if kind.detect(config)), BackboneKind.CAUSAL_LM)


def kind_of(subject: Backbone | Prompted) -> Kind:
    """The table entry of a backbone or of a prompted model's backbone."""
    backbone = subject if isinstance(subject, FrozenBackbone) else subject.backbone
    return KINDS[backbone.kind]


def required_capabilities(config: TrainConfig) -> list[Capability]:
    """What a training run asks of its backbone's kind, beyond plain prompt tuning."""
    needs = list(METHODS[config.method].needs)
    if config.task is TaskType.GENERATION:
        needs.insert(0, Capability.GENERATE)
    if config.init_from:
        needs.append(Capability.INIT_FROM)
    if config.gradient_checkpointing:
        needs.append(Capability.GRADIENT_CHECKPOINTING)
    return needs


def build_prompted_model(config: TrainConfig, backbone: Backbone, task: TaskData) -> Prompted:
    """The prompted model `config` describes around a loaded backbone (its kind's builder), after checking that
    the kind can do what the run asks."""
    kind = kind_of(backbone)
    for capability in required_capabilities(config):
        kind.require(capability, f"--model {backbone.name}")
    refuse_other_kinds_options(config, kind, backbone.name)
    return kind.build(config, backbone, task)


def refuse_other_kinds_options(config: TrainConfig, kind: Kind, name: str) -> None:
    """An option that another kind owns, set away from its default, is refused in one line (it would be ignored)."""
    own = kind.options.flat_names if kind.options else frozenset()
    for other in KINDS.values():
        for option in sorted((other.options.flat_names if other.options else frozenset()) - own):
            if config.option(option) != option_field(option).default:
                flag = "--" + option.replace("_", "-")
                raise ConfigError(f"{flag} applies to {other.name.value} backbones ({other.summary}); --model {name} "
                                  f"is a {kind.name.value} backbone ({kind.summary}): drop {flag}")


def prompted_model(backbone: Backbone, prompt: Any, template: Any, verbalizer: Any = None, **options: Any
                   ) -> Prompted:
    """A text kind's prompted model from parts (`labels`, `max_length`, `pooling`, `head` as the kind takes them)."""
    kind = kind_of(backbone)
    if kind.assemble is None:
        raise CapabilityError(f"a {kind.name.value} backbone ({kind.summary}) reads {kind.inputs}, not a text template")
    return kind.assemble(backbone, prompt, template, verbalizer, **options)


def load_prompted_model(path: str | Path, backbone: Backbone) -> Prompted:
    """Rebuild a prompted model from a prompt file on an already loaded backbone (checked for compatibility).

    Examples:
        >>> model = load_prompted_model("runs/rt/prompt.safetensors", load_backbone("smollm2-135m"))  # doctest: +SKIP
    """
    tensors, meta = read_prompt_tensors(path)
    check_compatible(meta, backbone, path)
    kind = kind_of(backbone)
    try:
        return kind.from_file(backbone, tensors, meta)
    except SoftPromptError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # metadata that lies about itself
        raise PromptFileError(f"{path}: its metadata does not describe a usable {kind.name.value} prompt "
                              f"({exc.__class__.__name__}: {exc})") from None


__all__ = ["KINDS", "CapabilityError", "Kind", "build_prompted_model", "detect_kind", "kind_of",
           "load_prompted_model", "prompted_model", "required_capabilities"]
