"""The options of CLIP backbones (CoOp), composed into `TrainConfig` as `config.coop` (`--coop-*`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...declare import OptionGroup, option


@dataclass(frozen=True)
class CoOpOptions:
    """CLIP backbones: CoOp context optimisation."""

    class_specific: bool = option(False, "CLIP backbones (CoOp): one context per class instead of one shared by "
                                         "all classes.", "coop", flag="coop_class_specific")
    class_token_position: str = option("end", "CLIP backbones (CoOp): where the class name goes in "
                                              "'[ctx] {class}': end, middle or front.",
                                       "coop", flag="coop_class_token_position")


OPTIONS = OptionGroup("coop", "Kind: CLIP (CoOp)", CoOpOptions)
