from .base import Backbone, BackboneKind, weights_fingerprint
from .causal_lm import CausalLMBackbone
from .encoder import EncoderBackbone, Seq2SeqBackbone
from .registry import (BUILTIN_BACKBONES, BUILTIN_FOLDERS, backbone_kind, builtin_backbone_dir, builtin_names,
                       cache_root, load_backbone, resolve_precision)

__all__ = ["Backbone", "BackboneKind", "CausalLMBackbone", "EncoderBackbone", "Seq2SeqBackbone", "BUILTIN_BACKBONES",
           "BUILTIN_FOLDERS", "backbone_kind", "builtin_backbone_dir", "builtin_names", "cache_root", "load_backbone",
           "resolve_precision", "weights_fingerprint"]
