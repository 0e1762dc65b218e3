"""How an option is declared, once, wherever it belongs: `config.py` for the options every run shares, a method's
module (`methods/deep.py`...) for that method's own, a kind's folder (`kinds/vision/options.py`...) for that kind's. `config.TrainConfig` composes them; the CLI's flags, the docs'
options table and YAML config sections are drawn from these declarations."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def option(default: Any, help: str, group: str, flag: str | None = None, cli_text: bool = False) -> Any:
    """An option: its default, its help (CLI, docs), its group (help panel, YAML section) and, inside a group, its
    flat name (`vpt.deep` is `--vpt-deep`, `vpt_deep:` in YAML). `cli_text`: the command line takes it as text
    and leaves the check to `TrainConfig` (whose choices are narrower than its type's)."""
    return field(default=default, metadata={"help": help, "group": group, "flag": flag, "cli_text": cli_text})


@dataclass(frozen=True)
class OptionGroup:
    """A method's or kind's own options: `name` is its YAML section and `TrainConfig` field (`config.deep`),
    `title` its help panel, `options` the frozen dataclass that declares them."""

    name: str
    title: str
    options: type

    @property
    def flat_names(self) -> frozenset[str]:
        """Its options' flat names (`vpt_deep`), as flags and YAML keys spell them."""
        return frozenset(f.metadata.get("flag") or f.name for f in fields(self.options))
