"""`softprompt export`: a prompt file in another ecosystem's format (PEFT prompt tuning)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from ..tools.interop import export_peft
from . import app


@app.command()
def export(
    prompt: Annotated[Path, typer.Argument(help="Prompt file (.safetensors).")],
    out_dir: Annotated[Path, typer.Argument(help="New or empty folder to write the adapter into.")],
    format: Annotated[str, typer.Option(help="Target format: peft.")] = "peft",
    base_model: Annotated[Optional[str], typer.Option(help="base_model_name_or_path to record (default: the "
                                                           "prompt's backbone name).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a previous export in OUT_DIR (never other files).")] = False,
) -> None:
    """Export PROMPT as a PEFT prompt-tuning adapter folder (prefix prompts only)."""
    if format != "peft":
        raise ConfigError(f"--format {format!r}: the only export format is 'peft'")
    out = export_peft(prompt, out_dir, base_model_name_or_path=base_model, overwrite=overwrite)
    print(out)
