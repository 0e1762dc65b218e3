"""Progress for long work: a live bar on a terminal, plain lines in a log.

A bar redrawn with carriage returns fills a log file or a pipe with frames; there the loop prints one line per
stage instead (`stage_line`).
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def on_terminal() -> bool:
    return sys.stderr.isatty()


def bar(total: int, desc: str, enabled: bool, **options) -> tqdm:
    """A tqdm bar when `enabled` and stderr is a terminal; otherwise a silent one (its `write` still prints)."""
    return tqdm(total=total, desc=desc, disable=not (enabled and on_terminal()), **options)


def stage_line(text: str, enabled: bool) -> None:
    """One line on stderr for a log (nothing on a terminal, where the bar shows it)."""
    if enabled and not on_terminal():
        print(f"softprompt: {text}", file=sys.stderr, flush=True)
