"""The options of ViT backbones (visual prompt tuning), composed into `TrainConfig` as `config.vpt` (`--vpt-deep`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...declare import OptionGroup, option


@dataclass(frozen=True)
class VPTOptions:
    """ViT backbones: visual prompt tuning."""

    deep: bool = option(False, "Vision backbones (ViT): a separate set of --num-virtual-tokens prompt tokens before "
                               "every layer (VPT-deep) instead of once at the input (VPT-shallow).",
                        "vpt", flag="vpt_deep")


OPTIONS = OptionGroup("vpt", "Kind: ViT (visual prompt tuning)", VPTOptions)
