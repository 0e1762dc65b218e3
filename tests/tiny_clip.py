"""A tiny random CLIP and a tiny CLIP-like tokenizer, built in-process (no downloads).

The tokenizer works like CLIP's: lower-cased, split on whitespace and punctuation (so a word encodes the same
wherever it stands), word-final BPE pieces end in `</w>`, `<|startoftext|>` ... `<|endoftext|>` around every
text, padding with `<|endoftext|>`, and the end-of-text token has the highest id (what original CLIP's
argmax pooling relies on).
"""

from __future__ import annotations

import functools
import re
import string

import torch

CLIP_CORPUS = [
    "a photo of a red square", "a photo of a green square", "a photo of a blue square",
    "a photo of a cat", "a photo of a dog", "a photo of the small bird", "x x x x red green blue",
    "a picture of an apple", "an image of a car", "a blurry photo of a big truck",
]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A BPE vocabulary built by hand (deterministic, unlike training one): every character, bare and word-final,
    and each corpus word merged left to right into one word-final token."""
    chars = string.ascii_lowercase + string.digits + string.punctuation
    pieces = list(chars) + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    words = sorted({w for line in CLIP_CORPUS for w in re.findall(r"\w+|[^\w\s]+", line.lower())})
    for word in words:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            parts = [parts[0] + parts[1]] + parts[2:]
            if parts[0] not in pieces:
                pieces.append(parts[0])
    return {piece: i for i, piece in enumerate(pieces)}, merges


@functools.lru_cache(maxsize=1)
def _clip_tokenizer_json() -> str:
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    vocab, merges = _vocab_and_merges()
    tok = Tokenizer(models.BPE(vocab, merges, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    tok.add_special_tokens([BOS, EOS])  # the two highest ids, EOS last
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)])
    return tok.to_str()


def tiny_clip_tokenizer():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_clip_tokenizer_json()),
                                   bos_token=BOS, eos_token=EOS, pad_token=EOS)


def tiny_clip(seed: int = 0, *, legacy_eos: bool = False):
    """Tiny random `CLIPModel` (text and vision hidden 32, projection 16, 32x32 images in 8x8 patches, 2 layers).

    `legacy_eos=True` sets the text config's `eos_token_id` to 2, which makes transformers pool at the argmax of
    the input ids (original CLIP); otherwise it is the tokenizer's end-of-text id (pool at its first occurrence).
    """
    from transformers import CLIPConfig, CLIPModel

    tok = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id,
            "pad_token_id": tok.pad_token_id, "eos_token_id": 2 if legacy_eos else tok.eos_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8, "num_channels": 3}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    return CLIPModel(config).eval()


def tiny_clip_backbone(seed: int = 0, *, legacy_eos: bool = False):
    from softprompt.kinds.clip.backbone import CLIPBackbone

    return CLIPBackbone(tiny_clip(seed, legacy_eos=legacy_eos), tiny_clip_tokenizer(),
                        name="tiny-clip-legacy" if legacy_eos else "tiny-clip")
