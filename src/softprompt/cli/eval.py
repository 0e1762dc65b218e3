"""`softprompt eval`: evaluate a prompt file on a dataset split; prints one JSON object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..data import load_task
from ..data.fields import field_names
from ..evaluation import evaluate
from . import app
from .common import LoadIn, load_for_inference


@app.command("eval")
def eval_command(
    prompt: Annotated[Path, typer.Option(help="Prompt file (.safetensors).")],
    data: Annotated[Optional[str], typer.Option(help="Built-in dataset or folder of split files.")] = None,
    split: Annotated[str, typer.Option(help="train, validation or test.")] = "test",
    test_file: Annotated[Optional[str], typer.Option(help="Evaluate this file instead of a folder's split.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Backbone (default: the one named in the prompt file).")] = None,
    limit: Annotated[int, typer.Option(help="Evaluate only the first N rows (0 = all).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 32,
    text_field: Annotated[Optional[str], typer.Option(help="Input field(s), comma-separated (default: the "
                                                           "template's).")] = None,
    label_field: Annotated[Optional[str], typer.Option(help="Label/target field (default label/target).")] = None,
    skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows", help="Skip bad rows instead of stopping.")] = False,
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    load_in: LoadIn = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Evaluate PROMPT on a split: {"accuracy": ..., "macro_f1": ..., "n": ...} (generation: loss, perplexity)."""
    given_fields = field_names(text_field) if text_field is not None else None  # a bad flag fails before loading
    prompted, meta = load_for_inference(prompt, model, precision, device, load_in)
    fields = given_fields or prompted.input_fields
    task = load_task(data, test_file=test_file if split == "test" else None,
                     validation_file=test_file if split == "validation" else None,
                     train_file=test_file if split == "train" else None,
                     task=prompted.task.value, text_fields=fields, label_field=label_field,
                     labels=meta.get("labels"), skip_bad_rows=skip_bad_rows, validation_fraction=0)
    result = evaluate(prompted, task.split(split), label_field=task.label_field, batch_size=batch_size,
                      limit=limit, progress=not quiet)
    result.update({"split": split, "data": task.name, "prompt": str(prompt), "backbone": prompted.backbone.name})
    if task.skipped_rows:
        result["skipped_rows"] = task.skipped_rows
    print(json.dumps(result))
