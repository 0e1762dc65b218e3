"""System (Debian) packages some tests use, and one way to require them.

`make test` installs `SYSTEM_PACKAGES` from the Makefile (the same list: `tests/cli/test_first_run.py` checks that the
two agree) when it runs as root with apt; elsewhere it prints the `apt-get install` line. A test that needs a
missing package is skipped with that line on a developer's machine and fails on CI (CI=true): CI runs with zero
skips, so a package CI lost shows up as a failure, not as a quiet skip.
"""

from __future__ import annotations

import os
import shutil

import pytest
from postgres import server_bin


def _fashion_mnist() -> bool:
    from softprompt.data.images import fashion_dir
    from softprompt.errors import DataError

    try:
        return fashion_dir().is_dir()
    except DataError:
        return False


# Debian package -> how a test finds it installed.
PRESENT = {
    "chromium": lambda: bool(shutil.which("chromium") or shutil.which("chromium-browser")),
    "espeak-ng": lambda: shutil.which("espeak-ng") is not None,
    "sox": lambda: shutil.which("sox") is not None,
    "dataset-fashion-mnist": _fashion_mnist,
    "postgresql": lambda: server_bin() is not None,
}


def require(*packages: str) -> None:
    """Skip (fail on CI) the calling test unless every named system package is installed."""
    missing = [p for p in packages if not PRESENT[p]()]
    if not missing:
        return
    unavailable(f"needs Debian's {' '.join(missing)}: apt-get install {' '.join(missing)} (make test does this as root)")


def unavailable(line: str) -> None:
    """Skip the calling test with `line` (what it needs and how to get it), or fail it on CI."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI runs with zero skips, and this test {line}")
    pytest.skip(line)
