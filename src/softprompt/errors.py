"""Typed exceptions. The CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations


class SoftPromptError(Exception):
    """Base class for every error a user can act on."""


class ConfigError(SoftPromptError, ValueError):
    """An option has a bad value; the message names the flag to change."""


class DataError(SoftPromptError, ValueError):
    """A data file or row is unusable; the message names the file, line and field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}" if line is not None else str(path)
            if field is not None:
                where += f": field '{field}'"
            where += ": "
        super().__init__(where + message)
        self.path, self.line, self.field = path, line, field


class IncompatiblePromptError(SoftPromptError):
    """A prompt file was trained for another backbone (fingerprint or hidden size differ). `reason` is the message
    without the command-line fix (`pass --model NAME`), for clients that have no command line."""

    def __init__(self, reason: str, fix: str = "") -> None:
        super().__init__(f"{reason}: {fix}" if fix else reason)
        self.reason = reason


class PromptFileError(SoftPromptError):
    """A prompt file is missing, unreadable or not a softprompt file."""


class BackboneError(SoftPromptError):
    """A backbone could not be found or loaded."""


class StorageError(SoftPromptError):
    """A file could not be written (full disk, read-only folder); nothing half-written was left behind."""
