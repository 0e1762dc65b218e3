"""The options of Whisper backbones (speech prompts), composed into `TrainConfig` as `config.whisper`
(`--encoder-prompt-tokens`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...declare import OptionGroup, option


@dataclass(frozen=True)
class WhisperOptions:
    """Whisper backbones: speech prompts."""

    encoder_prompt_tokens: int = option(0, "Speech backbones (Whisper): trained vectors appended to the encoder's "
                                           "output too (0 = the decoder prompt only).",
                                        "whisper", flag="encoder_prompt_tokens")


OPTIONS = OptionGroup("whisper", "Kind: Whisper (speech)", WhisperOptions)
