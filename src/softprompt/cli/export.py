"""`softprompt export`: a prompt file in another ecosystem's format (PEFT, vLLM, TensorRT-LLM / NeMo)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from ..tools.engine_export import export_trtllm, export_vllm
from ..tools.interop import export_peft
from . import app

FORMATS = ("peft", "vllm", "trtllm")


@app.command()
def export(
    prompt: Annotated[list[Path], typer.Argument(help="Prompt file(s) (.safetensors); several only for --format "
                                                      "trtllm (task ids in the order given).")],
    out_dir: Annotated[Path, typer.Argument(help="New or empty folder to write the export into.")],
    format: Annotated[str, typer.Option(help="peft: a PEFT prompt-tuning adapter. vllm: for `vllm serve "
                                             "--enable-prompt-embeds` and softprompt.clients.vllm. trtllm: a "
                                             "TensorRT-LLM / NeMo p-tuning prompt table of several prompts.")
                      ] = "peft",
    base_model: Annotated[Optional[str], typer.Option(help="The backbone the target loads: PEFT's "
                                                           "base_model_name_or_path, vLLM's model folder (default: "
                                                           "the prompt's backbone name).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a previous export in OUT_DIR (never other files).")] = False,
) -> None:
    """Export PROMPT for another ecosystem: PEFT (prefix prompts), vLLM (prompt embeddings) or TensorRT-LLM."""
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if format != "trtllm" and len(prompt) != 1:
        raise ConfigError(f"--format {format} exports one prompt file; got {len(prompt)} (several: --format trtllm)")
    if format == "peft":
        out = export_peft(prompt[0], out_dir, base_model_name_or_path=base_model, overwrite=overwrite)
    elif format == "vllm":
        out = export_vllm(prompt[0], out_dir, backbone_folder=base_model, overwrite=overwrite)
    else:
        if base_model is not None:
            raise ConfigError("--base-model applies to --format peft and vllm")
        out = export_trtllm(prompt, out_dir, overwrite=overwrite)
    print(out)
