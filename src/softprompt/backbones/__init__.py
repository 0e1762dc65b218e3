from .base import Backbone, BackboneKind, weights_fingerprint
from .causal_lm import CausalLMBackbone
from .registry import BUILTIN_BACKBONES, builtin_backbone_dir, cache_root, load_backbone, resolve_precision

__all__ = ["Backbone", "BackboneKind", "CausalLMBackbone", "BUILTIN_BACKBONES", "builtin_backbone_dir",
           "cache_root", "load_backbone", "resolve_precision", "weights_fingerprint"]
