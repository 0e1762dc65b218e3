"""Pieces the CLI verbs share: loading a prompt with its backbone."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import resolve_device
from ..formats import read_prompt_tensors
from ..hub import load_backbone, resolve_precision
from ..kinds import load_prompted_model
from ..protocols import PromptedTask


def pick_device(device: str) -> torch.device:
    return resolve_device(device)


def load_for_inference(prompt: Path, model: str | None, precision: str, device: str) -> tuple[PromptedTask, dict]:
    """Load a prompt file and its backbone (from `model`, else the name in the file's metadata)."""
    _, meta = read_prompt_tensors(prompt)
    target = pick_device(device)
    backbone = load_backbone(model or meta["backbone"]["name"], dtype=resolve_precision(precision, target),
                             device=target)
    return load_prompted_model(prompt, backbone), meta

