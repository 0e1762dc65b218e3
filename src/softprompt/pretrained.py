"""`from_pretrained`: a prompt folder or file with its backbone, in one call (the backbone named in the file unless
one is given), for library users who think in transformers' and PEFT's terms.

Examples:
    >>> model = softprompt.from_pretrained("runs/rt")                # doctest: +SKIP
    >>> model.save_pretrained("exported/rt")                          # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import formats
from .config import resolve_device
from .errors import PromptFileError
from .hub import load_backbone, resolve_precision
from .kinds.table import load_prompted_model
from .protocols import Backbone, Prompted


def from_pretrained(path: str | Path, backbone: Backbone | str | None = None, *, precision: str = "auto",
                    device: str = "auto") -> Prompted:
    """Load `path` (a folder holding prompt.safetensors, or a prompt file) on `backbone` (loaded, a name or
    folder, or None: the name recorded in the file)."""
    path = Path(path)
    file = path / formats.PROMPT_FILE if path.is_dir() else path
    if path.is_dir() and not file.is_file():
        raise PromptFileError(f"{path}: no {formats.PROMPT_FILE} in this folder")
    if not isinstance(backbone, Backbone):
        _, meta = formats.read_prompt_tensors(file)
        target = resolve_device(device)
        backbone = load_backbone(backbone or meta["backbone"]["name"], dtype=resolve_precision(precision, target),
                                 device=target)
    return load_prompted_model(file, backbone)


def _from_pretrained(path: str | Path, backbone: Any = None, **options: Any) -> Prompted:
    return from_pretrained(path, backbone, **options)


formats._FROM_PRETRAINED = _from_pretrained
