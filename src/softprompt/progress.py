"""Progress for long work: a live bar on a terminal, plain lines in a log.

A bar redrawn with carriage returns fills a log file or a pipe with frames; there the loop prints one line per
stage instead (`stage_line`).
"""

from __future__ import annotations

import contextlib
import functools
import sys

from tqdm.auto import tqdm


def on_terminal() -> bool:
    return sys.stderr.isatty()


def bar(total: int, desc: str, enabled: bool, **options) -> tqdm:
    """A tqdm bar when `enabled` and stderr is a terminal; otherwise a silent one (its `write` still prints)."""
    return tqdm(total=total, desc=desc, disable=not (enabled and on_terminal()), **options)


@contextlib.contextmanager
def third_party_bar_on_terminal_only(module):
    """Within the block, `module`'s tqdm bars draw only on a terminal (a log file gets no frames)."""
    original = module.tqdm
    module.tqdm = functools.partial(original, disable=not on_terminal())
    try:
        yield
    finally:
        module.tqdm = original


def stage_line(text: str, enabled: bool) -> None:
    """One line on stderr for a log (nothing on a terminal, where the bar shows it)."""
    if enabled and not on_terminal():
        print(f"softprompt: {text}", file=sys.stderr, flush=True)


class _DropAcceleratorGuess:
    """DeepSpeed logs 'Setting accelerator to CPU...' on stdout whenever it is imported on a machine without a GPU
    (accelerate imports it when installed): true of every CPU run, and not softprompt's to say."""

    def filter(self, record) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


def quiet_third_party(verbose: bool = False) -> None:
    """Keep softprompt's output to softprompt's lines: third-party progress bars that say nothing to the user
    (transformers' 'Loading weights' bar, a few milliseconds) and DeepSpeed's accelerator guess are off. Real
    warnings stay. A variable the user set wins; `verbose` leaves everything on. Call before transformers is
    imported."""
    import logging
    import os

    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow huggingface_hub's switch
    logging.getLogger("DeepSpeed").addFilter(_DropAcceleratorGuess())
    from .cache import IMPORT_NOISE

    for name in IMPORT_NOISE:  # torchao's import where it is installed (transformers imports it on every load)
        logging.getLogger(name).setLevel(logging.ERROR)
