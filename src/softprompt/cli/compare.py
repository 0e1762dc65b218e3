"""`softprompt compare`: prompt tuning (plain, residual, DePT) vs deep prompts vs LoRA vs adapters vs full fine-tuning vs a linear probe
vs the zero-shot template, on one task at one budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..tools.compare import compare as run
from ..tools.compare import parse_methods
from . import app


@app.command()
def compare(
    data: Annotated[str, typer.Option(help="Built-in dataset or folder of split files (classification).")],
    model: Annotated[str, typer.Option(help="Backbone: built-in name or local folder.")] = "smollm2-135m",
    methods: Annotated[str, typer.Option(help="Comma-separated: prompt, residual, dept, deep (the prompt methods, "
                                              "as `train --method` trains them), lora, adapter, full, probe, "
                                              "zeroshot.")] = "prompt,deep,lora,adapter,full,probe,zeroshot",
    seeds: Annotated[int, typer.Option(help="Seeds per trained method (zero-shot runs once).")] = 3,
    max_steps: Annotated[int, typer.Option(help="Optimiser steps for every trained method.")] = 300,
    batch_size: Annotated[int, typer.Option(help="Examples per step for every method.")] = 16,
    lr: Annotated[Optional[float], typer.Option(help="One learning rate for all (default: each method's "
                                                     "own: prompt, residual and dept 3e-2, deep 1e-2, lora/adapter "
                                                     "1e-3, full 2e-5, probe 1e-2; DePT's low-rank offset keeps "
                                                     "--dept-lr's default 1e-4).")] = None,
    eval_limit: Annotated[int, typer.Option(help="Validation rows per evaluation (best state kept).")] = 300,
    test_limit: Annotated[int, typer.Option(help="Test rows (0 = all).")] = 0,
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16 (weight-training methods keep fp32 "
                                                "master weights and compute in this precision).")] = "auto",
    output: Annotated[Path, typer.Option(help="Folder for compare.json, compare.md, compare.png, runs/.")] = Path(
        "runs/compare"),
    resume: Annotated[bool, typer.Option(help="Keep the (method, seed) rows already finished in OUTPUT/runs.jsonl "
                                              "and run only the rest.")] = False,
) -> None:
    """Train and measure each method (own process per method and seed); print the table."""

    chosen = parse_methods(methods)
    run(model, data, chosen, seeds=seeds, max_steps=max_steps, output=output, batch_size=batch_size,
        eval_limit=eval_limit, test_limit=test_limit, precision=precision, lr=lr, resume=resume)
    print((output / "compare.md").read_text())
