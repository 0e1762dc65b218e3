"""`softprompt import`: a PEFT prompt-tuning adapter folder -> a softprompt prompt file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..hub import load_backbone
from ..kinds.table import kind_of
from ..protocols import Capability
from ..tools.interop import import_peft, read_peft_adapter
from . import app
from .common import pick_device


@app.command("import")
def import_command(
    peft_dir: Annotated[Path, typer.Argument(help="PEFT adapter folder (adapter_config.json + safetensors).")],
    output: Annotated[Path, typer.Argument(help="Prompt file to write (.safetensors).")],
    model: Annotated[Optional[str], typer.Option(help="Backbone (default: the adapter's base model).")] = None,
    template: Annotated[Optional[str], typer.Option(help="Input template the adapter was trained with, without "
                                                         "soft markers, e.g. 'Review: {text}\\nSentiment: {label}'.")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Comma-separated labels (classification).")] = None,
    label_words: Annotated[Optional[list[str]], typer.Option(help="LABEL=word1,word2 (repeatable).")] = None,
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Import a PEFT prompt-tuning adapter, checked against the backbone, as a prompt file."""

    _, config, ours = read_peft_adapter(peft_dir)
    name = model or (ours or {}).get("backbone", {}).get("name") or config.get("base_model_name_or_path")
    backbone = load_backbone(name, dtype=precision, device=pick_device(device))
    kind_of(backbone).require(Capability.PEFT_EXPORT, f"--model {backbone.name}")
    out = import_peft(peft_dir, output, backbone, template=template,
                      labels=[x for x in labels.split(",") if x] if labels else None,
                      label_words=label_words or ())
    print(out)
