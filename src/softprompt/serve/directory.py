"""A folder of prompt files kept in step with a prompt bank: files added, replaced or removed there are served
without a restart (polled every few seconds), and prompts uploaded or deleted through the API land there.

Names are file stems that match `NAME_PATTERN` (no path separators, no leading dot); only `*.safetensors` is
read, and it is parsed as safetensors (never unpickled). A file that fails to load is reported once and
retried when it changes (a copy still in progress, say); the other prompts keep serving.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, IncompatiblePromptError, PromptFileError, SoftPromptError, StorageError
from ..formats import user_permissions
from ..inference.bank import PromptBank, UnknownPromptError
from ..kinds.table import load_prompted_model
from ..protocols import Prompted

log = logging.getLogger("softprompt.serve")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SUFFIX = ".safetensors"
# The whole rule as JSON Schema, for the OpenAPI document: no two dots in a row, at most 64 characters, no extension.
NAME_SCHEMA = {"pattern": r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$", "maxLength": 64,
               "not": {"pattern": r"\.safetensors$"}}


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or ".." in name or name.endswith(SUFFIX):
        raise ConfigError(f"prompt name {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', "
                          "starting with a letter or digit (no '..', no extension)")
    return name


class PromptDirectory:
    def __init__(self, bank: PromptBank, folder: str | Path, *,
                 prepare: Callable[[Prompted], None] = lambda model: None) -> None:
        self.bank = bank
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(f"--prompts {self.folder}: no such folder; create it or point to your prompt files")
        self.prepare = prepare
        self._known: dict[str, tuple[int, int]] = {}      # name -> (mtime_ns, size) of the file being served
        self._failed: dict[str, tuple[tuple[int, int], str]] = {}  # name -> (stat of the file, why it is not served)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def path(self, name: str) -> Path:
        return self.folder / f"{check_name(name)}{SUFFIX}"

    @staticmethod
    def _stat(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_mtime_ns, st.st_size

    def _load(self, name: str, path: Path, shown: str) -> Prompted:
        """Load and prepare one file. Whatever a file holds, the only error that leaves is a `SoftPromptError`
        (a crafted or damaged file must never stop a scan or answer 500), and its message names the file as
        `shown` -- a client learns nothing of the server's paths, and gets no command-line advice."""
        try:
            model = load_prompted_model(path, self.bank.backbone)
            self.prepare(model)
        except IncompatiblePromptError as exc:
            raise IncompatiblePromptError(exc.reason.replace(str(path), shown) + ": train it on this server's "
                                          "backbone (GET /healthz names it)") from None
        except SoftPromptError as exc:
            message = str(exc).replace(str(path), shown)
            try:  # the same kind of error (its HTTP status), telling the new message
                error = copy.copy(exc)
                error.args = (message,)
            except Exception:  # noqa: BLE001 -- an error class copy cannot rebuild: still this file's fault
                error = PromptFileError(message)
            raise error from None
        except Exception as exc:  # noqa: BLE001 -- any other failure is still this file's fault
            log.exception("prompt file %s could not be loaded", path)
            raise PromptFileError(f"{shown}: not a usable prompt file ({exc.__class__.__name__})") from exc
        return model

    def not_loaded(self) -> list[dict[str, str]]:
        """Files in the folder that are not served, each with the reason."""
        with self._lock:
            return [{"name": name, "reason": reason} for name, (_, reason) in sorted(self._failed.items())]

    def scan(self) -> dict[str, list[str]]:
        """Bring the bank in step with the folder once; returns the names added, replaced, removed and failed."""
        report: dict[str, list[str]] = {"added": [], "replaced": [], "removed": [], "failed": []}
        with self._lock:
            present: dict[str, Path] = {}
            for path in sorted(self.folder.glob(f"*{SUFFIX}")):
                name = path.name[: -len(SUFFIX)]
                if NAME_PATTERN.fullmatch(name) and ".." not in name:
                    present[name] = path
            for name in [n for n in self._known if n not in present]:
                self._known.pop(name)
                if name in self.bank:
                    self.bank.remove(name)
                report["removed"].append(name)
            for name in [n for n in self._failed if n not in present]:
                self._failed.pop(name)
            for name, path in present.items():
                try:
                    stat = self._stat(path)
                except FileNotFoundError:
                    continue
                if self._known.get(name) == stat or self._failed.get(name, (None, ""))[0] == stat:
                    continue
                try:
                    model = self._load(name, path, path.name)
                except SoftPromptError as exc:
                    self._failed[name] = (stat, str(exc))
                    log.warning("prompt file %s not served: %s", path, exc)
                    report["failed"].append(name)
                    continue
                self._failed.pop(name, None)
                report["replaced" if name in self._known else "added"].append(name)
                self.bank.add(name, model)
                self._known[name] = stat
        for kind in ("added", "replaced", "removed"):
            if report[kind]:
                log.info("prompts %s: %s", kind, ", ".join(report[kind]))
        return report

    def install(self, name: str, data: bytes) -> tuple[Prompted, bool]:
        """Validate an uploaded prompt file, then write it into the folder and serve it. Returns (model, replaced).
        Raises PromptFileError (not a prompt file) or IncompatiblePromptError (another backbone); then nothing
        is written."""
        target = self.path(name)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".upload", dir=self.folder)
        except OSError as exc:
            raise StorageError(f"the server could not store the prompt file ({exc.strerror})") from None
        try:
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            except OSError as exc:  # a full disk: the temp file goes, the served file is untouched
                raise StorageError(f"the server could not store the prompt file ({exc.strerror})") from None
            model = self._load(name, Path(tmp), f"the uploaded file for '{name}'")
            user_permissions(tmp)
            with self._lock:
                replaced = name in self.bank
                try:
                    os.replace(tmp, target)
                except OSError as exc:
                    raise StorageError(f"the server could not store the prompt file ({exc.strerror})") from None
                self.bank.add(name, model)
                self._known[name] = self._stat(target)
                self._failed.pop(name, None)
            return model, replaced
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def delete(self, name: str) -> None:
        with self._lock:
            if name not in self.bank:
                raise UnknownPromptError(f"no prompt named '{name}'")
            self.bank.remove(name)
            self._known.pop(name, None)
            path = self.folder / f"{name}{SUFFIX}"
            if NAME_PATTERN.fullmatch(name) and path.exists():
                path.unlink()

    # ---- polling -------------------------------------------------------------------------------------------
    def watch(self, interval: float) -> None:
        if interval > 0 and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, args=(interval,), name="softprompt-prompt-dir",
                                            daemon=True)
            self._thread.start()

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.scan()
            except Exception:  # noqa: BLE001 -- keep watching whatever one scan met
                log.exception("scanning %s failed", self.folder)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
