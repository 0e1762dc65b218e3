"""The options of encoders without a vocabulary head (a trained classification head), composed into `TrainConfig`
as `config.encoder` (`--pooling`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...declare import OptionGroup, option


@dataclass(frozen=True)
class EncoderOptions:
    """Encoders without a vocabulary head: a trained classification head."""

    pooling: str = option("mean", "Encoders without a vocabulary head (minilm-l6): the classification head reads the "
                                  "mean of the final states (mean) or the first token's (cls).",
                          "encoder", flag="pooling")


OPTIONS = OptionGroup("encoder", "Kind: encoders with a classification head (minilm-l6)", EncoderOptions)
