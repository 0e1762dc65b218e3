"""`softprompt predict`: label (classification) or generated text (generation) for input texts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..data.readers import read_jsonl_text, read_rows
from ..errors import ConfigError
from ..evaluation import predict_scores
from ..formats import atomic_write, check_output_path
from ..inference import generate
from ..progress import bar as progress_bar
from ..progress import stage_line
from ..protocols import DecodesItself, TaskType
from . import app
from .common import LoadIn, load_for_inference


@app.command()
def predict(
    texts: Annotated[Optional[list[str]], typer.Argument(
        help="Input text(s); each fills the template's field. '-' reads one text per line from standard input.")] = None,
    prompt: Annotated[Path, typer.Option(help="Prompt file (.safetensors).")] = ...,
    input_file: Annotated[Optional[str], typer.Option(
        "--input", help="Label a whole data file (.jsonl, .csv, .tsv, .parquet; '-' reads JSONL from standard "
                        "input) holding the template's fields; writes one JSON line per row.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        help="With --input: write the JSON lines to this file (written whole, then renamed) instead of stdout.")] = None,
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
    load_in: LoadIn = None,
) -> None:
    """Print the predicted label (or generated text) for each input, one per line; with --input, one JSON line per
    row of a data file."""
    if seed is not None and not 0 <= seed < 2**53:  # the server's sampling seeds take the same range
        raise ConfigError(f"--seed must be in 0..2**53 - 1, got {seed}")
    if input_file is not None and texts:
        raise ConfigError("give input texts or --input FILE, not both")
    if input_file is None and not texts:
        raise ConfigError("nothing to predict: give input texts, '-' (texts from standard input) or --input FILE")
    if output is not None and input_file is None:
        raise ConfigError("--output goes with --input FILE (texts given as arguments are printed)")
    if output is not None:
        check_output_path(output, folder=False)
    if texts == ["-"]:
        texts = [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
        if not texts:
            raise ConfigError("predict -: standard input held no text (one input per line)")
    prompted, _ = load_for_inference(prompt, model, precision, device, load_in)
    fields = prompted.input_fields
    if input_file is not None:
        checks = dict(text_fields=fields, label_field=None)
        rows = (read_jsonl_text(sys.stdin.read(), **checks) if input_file == "-" else read_rows(input_file, **checks))[0]
        _label_file(prompted, rows, output, max_new_tokens=max_new_tokens, do_sample=do_sample,
                    temperature=temperature, top_p=top_p, stop=stop or (), seed=seed)
        return
    if len(fields) != 1:
        raise ConfigError(f"this prompt's template has fields {list(fields)}; give them per row with --input FILE")
    rows = [{fields[0]: text} for text in texts]
    if prompted.task is TaskType.CLASSIFICATION:
        for record in _classify(prompted, rows):
            print(json.dumps(record) if as_json else record["label"])
        return
    if isinstance(prompted, DecodesItself):  # an encoder-decoder generates through its own decoder (greedy)
        if do_sample or stop:
            raise ConfigError("--sample and --stop are for causal-LM prompts; an encoder-decoder prompt decodes greedily")
        for text in prompted.generate(rows, max_new_tokens=max_new_tokens):
            print(json.dumps({"text": text}) if as_json else text)
        return
    outputs = generate(prompted, rows, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                       top_p=top_p, stop=stop or (), seed=seed)
    for text in outputs:
        print(json.dumps({"text": text}) if as_json else text)


def _classify(prompted, rows: list[dict], progress: bool = False) -> list[dict]:
    labels = prompted.labels
    return [{"label": labels[int(row_scores.argmax())], "scores": dict(zip(labels, map(float, row_scores.tolist())))}
            for row_scores in predict_scores(prompted, rows, progress=progress)]


def _label_file(prompted, rows: list[dict], output: Path | None, **generation) -> None:
    """One JSON line per row, in file order: the row number, its input fields, and the label with scores (or the
    generated text)."""
    if prompted.task is TaskType.CLASSIFICATION:
        results = _classify(prompted, rows, progress=True)
    else:
        if isinstance(prompted, DecodesItself):
            texts = prompted.generate(rows, max_new_tokens=generation["max_new_tokens"])
        else:
            texts = []
            bar = progress_bar(len(rows), "generating", True)
            for start in range(0, len(rows), 8):
                texts += generate(prompted, rows[start:start + 8], **generation)
                bar.update(len(rows[start:start + 8]))
            bar.close()
        results = [{"generated": text} for text in texts]
    lines = "".join(json.dumps({"row": number, **row, **result}) + "\n"
                    for number, (row, result) in enumerate(zip(rows, results), start=1))
    if output is None:
        sys.stdout.write(lines)
        return
    atomic_write(output, lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))
    stage_line(f"predict: {len(rows)} rows -> {output}", True)
