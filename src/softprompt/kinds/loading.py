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
    # int8 weights are rounded to 1/127 of their group's largest weight, far coarser than bf16: the weights load in
    # bf16 (half of fp32's memory while loading), and what stays float is widened to `dtype` afterwards.
    load_dtype = torch.bfloat16 if load_in == "int8" and dtype == torch.float32 else dtype
    model = from_pretrained(auto.from_pretrained, folder, name, kind, dtype=load_dtype, **extra)
    if not bitsandbytes:
        model = model.to(device)  # a bitsandbytes model is placed by its loader and cannot move
    if load_in == "int8":
        setattr(model, CHECKPOINT_FINGERPRINT, weights_fingerprint(model))  # first: it names the checkpoint
        hold_int8(model)
        model = model.to(dtype)  # the int8 weights stay int8
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
