"""Loading a Hugging Face folder for a kind: its config, its weights (optionally quantised), clear errors.

transformers is imported inside these functions: `import softprompt` (and the CLI's `--help`) stays fast.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

import torch

from ..cache import quiet_imports, quiet_transformers
from ..errors import BackboneError
from ..frozen import CHECKPOINT_FINGERPRINT, weights_fingerprint


def _first_line(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0]}"


def read_config(folder: str | Path, name: str) -> Any:
    """The folder's transformers config, or a `BackboneError` naming `--model`."""
    from transformers import AutoConfig  # start-up time

    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"--model {name}: could not read its config ({_first_line(exc)})") from exc


def from_pretrained(load: Callable[..., Any], folder: str | Path, name: str, kind: str, **kwargs: Any) -> Any:
    """`load(folder, **kwargs)` quietly; an unreadable folder (OSError: the cause is kept, so that a damaged
    built-in cache can be rebuilt) or an unsupported model (ValueError) becomes a `BackboneError`."""
    try:
        with quiet_transformers():
            return load(folder, **kwargs)
    except OSError as exc:
        raise BackboneError(f"--model {name}: could not load ({_first_line(exc)})") from exc
    except ValueError as exc:
        raise BackboneError(f"--model {name}: not a {kind} model this version can load "
                            f"({_first_line(exc)})") from exc


def load_text_model(auto: Any, folder: str | Path, name: str, kind: str, *, dtype: torch.dtype,
                    device: torch.device | str, load_in: str | None, **extra: Any) -> tuple[Any, Any]:
    """(model on `device`, tokenizer) of a text kind; `load_in` holds the weights in int8 (torchao, any device)
    or quantises with bitsandbytes (8bit / 4bit, CUDA)."""
    from transformers import AutoTokenizer  # start-up time

    bitsandbytes = load_in is not None and load_in != "int8"
    if load_in == "int8":
        _require_torchao()
    elif bitsandbytes:
        extra["quantization_config"] = quantization_config(load_in, dtype, device)
        extra["device_map"] = {"": str(torch.device(device))}
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, folder, name, kind)
    model = from_pretrained(auto.from_pretrained, folder, name, kind, dtype=dtype, **extra)
    if not bitsandbytes:
        model = model.to(device)  # a bitsandbytes model is placed by its loader and cannot move
    if load_in == "int8":
        hold_int8(model)
    return model, tokenizer


def _require_torchao() -> None:
    if importlib.util.find_spec("torchao") is None:
        raise BackboneError("--load-in int8 needs torchao: pip install 'softprompt[int8]' (or: pip install "
                            "'torchao>=0.18,<0.19')")


def hold_int8(model: torch.nn.Module) -> int:
    """Hold every linear layer's weight in int8 with one scale per output row (torchao's weight-only int8); the
    activations, the prompt and its gradient keep the model's dtype. The output head stays as loaded: the scores
    of the answer words are read from it. Returns the number of layers converted.

    The frozen weights take a quarter of their fp32 memory (half of bf16); the input gradient flows through the
    quantised layers, so prompts train on such a backbone.
    """
    _require_torchao()
    with quiet_imports():
        from torchao.quantization import Int8WeightOnlyConfig, quantize_  # optional: --load-in int8 only
    setattr(model, CHECKPOINT_FINGERPRINT, weights_fingerprint(model))  # before: it names the checkpoint
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    chosen = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    ids = {id(m) for m in chosen}
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, _fqn: id(module) in ids)
    return len(chosen)


def refuse_quantisation(load_in: str | None, kind: str) -> None:
    if load_in is not None:
        raise BackboneError(f"--load-in {load_in}: quantised loading is implemented for text backbones; this is a "
                            f"{kind} backbone (drop --load-in)")


def quantization_config(load_in: str, dtype: torch.dtype, device: torch.device | str):
    """transformers' BitsAndBytesConfig for `--load-in 8bit|4bit`, or a clear error where it cannot run."""

    if load_in not in ("8bit", "4bit"):
        raise BackboneError(f"--load-in {load_in!r}: choose int8, 8bit or 4bit")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BackboneError(f"--load-in {load_in} needs bitsandbytes: pip install bitsandbytes (and a CUDA GPU)")
    if torch.device(device).type != "cuda":
        raise BackboneError(f"--load-in {load_in} quantises on a CUDA GPU; this run is on {device} (use --device cuda)")
    from transformers import BitsAndBytesConfig  # optional: only for --load-in

    if load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16)
