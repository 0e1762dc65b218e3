"""Pieces the CLI verbs share: loading a prompt with its backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

from ..config import LOAD_IN, resolve_device
from ..errors import ConfigError
from ..formats import read_prompt_tensors
from ..hub import load_backbone, resolve_precision
from ..kinds.table import load_prompted_model
from ..protocols import Prompted


# The verbs that load a backbone for inference share one --load-in.
LoadIn = Annotated[Optional[str], typer.Option(
    help="Hold the frozen backbone quantised: int8 (weight-only, CPU or GPU: a quarter of fp32's weight "
         "memory), 8bit or 4bit (bitsandbytes, CUDA).")]


def pick_device(device: str) -> torch.device:
    return resolve_device(device)


def check_load_in(load_in: str | None) -> None:
    if load_in is not None and load_in not in LOAD_IN:
        raise ConfigError(f"--load-in {load_in!r}: choose {', '.join(LOAD_IN)}")


def load_for_inference(prompt: Path, model: str | None, precision: str, device: str,
                       load_in: str | None = None) -> tuple[Prompted, dict]:
    """Load a prompt file and its backbone (from `model`, else the name in the file's metadata)."""
    check_load_in(load_in)
    _, meta = read_prompt_tensors(prompt)
    target = pick_device(device)
    backbone = load_backbone(model or meta["backbone"]["name"], dtype=resolve_precision(precision, target),
                             device=target, load_in=load_in)
    return load_prompted_model(prompt, backbone), meta



def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
