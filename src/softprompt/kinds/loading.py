"""Loading a Hugging Face folder for a kind: its config, its weights (optionally quantised), clear errors.

transformers is imported inside these functions: `import softprompt` (and the CLI's `--help`) stays fast.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

import torch

from ..cache import quiet_transformers
from ..errors import BackboneError
from ..frozen import CHECKPOINT_FINGERPRINT, weights_fingerprint
from .int8 import hold_int8


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
    """(model on `device`, tokenizer) of a text kind; `load_in` holds the linear weights in int8 (`int8`, any
    device) or quantises with bitsandbytes (`8bit` / `4bit`, CUDA)."""
    from transformers import AutoTokenizer  # start-up time

    bitsandbytes = load_in is not None and load_in != "int8"
    if bitsandbytes:
        extra["quantization_config"] = quantization_config(load_in, dtype, device)
        extra["device_map"] = {"": str(torch.device(device))}
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, folder, name, kind)
    # int8: the checkpoint loads as stored (memory-mapped, not yet read), each linear layer is quantised as it is
    # read, and only what stays float is copied, in `dtype`: the float model is never resident whole.
    load_dtype = "auto" if load_in == "int8" else dtype
    model = from_pretrained(auto.from_pretrained, folder, name, kind, dtype=load_dtype, **extra)
    if load_in == "int8":  # on the CPU, before any move: a device never holds the float model either
        setattr(model, CHECKPOINT_FINGERPRINT, weights_fingerprint(model))  # first: it names the checkpoint
        hold_int8(model)
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():  # own copies: the checkpoint's mapping is released; int8 stays int8
                tensor.data = tensor.data.to(dtype, copy=True)
    if not bitsandbytes:
        model = model.to(device)  # a bitsandbytes model is placed by its loader and cannot move
    return model, tokenizer


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
