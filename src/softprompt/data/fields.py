"""Input field names as a user gives them (`--text-field premise,hypothesis`)."""

from __future__ import annotations

from ..errors import ConfigError


def field_names(value: str, flag: str = "--text-field") -> tuple[str, ...]:
    """Comma-separated input field names -> a tuple; a value that names none is refused, naming `flag`."""
    names = tuple(f.strip() for f in value.split(",") if f.strip())
    if not names:
        raise ConfigError(f"{flag} {value!r} names no field: give the input field name(s), comma-separated "
                          f"(e.g. {flag} text, or {flag} premise,hypothesis)")
    return names
