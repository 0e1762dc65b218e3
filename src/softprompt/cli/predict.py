"""`softprompt predict`: label (classification) or generated text (generation) for input texts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from ..evaluation import predict_scores
from ..inference import generate
from ..protocols import TaskType
from . import app
from .common import load_for_inference


@app.command()
def predict(
    texts: Annotated[list[str], typer.Argument(help="Input text(s); each fills the template's first field. '-' reads "
                                                    "one text per line from standard input.")],
    prompt: Annotated[Path, typer.Option(help="Prompt file (.safetensors).")],
    model: Annotated[Optional[str], typer.Option(help="Backbone (default: the one named in the prompt file).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Generation: tokens to generate at most.")] = 32,
    do_sample: Annotated[bool, typer.Option("--sample/--greedy", help="Generation: sample or greedy.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop string (repeatable).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines with scores.")] = False,
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Print the predicted label (or generated text) for each input, one per line."""
    if texts == ["-"]:
        texts = [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
        if not texts:
            raise ConfigError("predict -: standard input held no text (one input per line)")
    prompted, _ = load_for_inference(prompt, model, precision, device)
    fields = prompted.input_fields
    if len(fields) != 1:
        raise ConfigError(f"this prompt's template has fields {list(fields)}; predict fills a single field")
    rows = [{fields[0]: text} for text in texts]
    if prompted.task is TaskType.CLASSIFICATION:
        scores = predict_scores(prompted, rows)
        labels = prompted.labels
        for row_scores in scores:
            label = labels[int(row_scores.argmax())]
            if as_json:
                print(json.dumps({"label": label, "scores": dict(zip(labels, map(float, row_scores.tolist())))}))
            else:
                print(label)
        return
    if hasattr(prompted, "generate"):  # an encoder-decoder generates through its own decoder (greedy)
        if do_sample or stop:
            raise ConfigError("--sample and --stop are for causal-LM prompts; an encoder-decoder prompt decodes greedily")
        for text in prompted.generate(rows, max_new_tokens=max_new_tokens):
            print(json.dumps({"text": text}) if as_json else text)
        return
    outputs = generate(prompted, rows, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                       top_p=top_p, stop=stop or (), seed=seed)
    for text in outputs:
        print(json.dumps({"text": text}) if as_json else text)
