"""`softprompt sweep`: search learning rate, prompt length, initialisation and placement (optuna)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import TrainConfig
from ..tools.sweep import HEARTBEAT_SECONDS, STUDY_NAME, parse_space
from ..tools.sweep import sweep as run
from . import app


@app.command()
def sweep(
    data: Annotated[str, typer.Option(help="Built-in dataset or folder of split files.")],
    model: Annotated[Optional[str], typer.Option(help="Backbone: built-in name or local folder.  [default: "
                                                      "smollm2-135m]")] = None,
    lr: Annotated[str, typer.Option(help="Learning rates, comma-separated.")] = "3e-3,3e-2,3e-1",
    num_virtual_tokens: Annotated[str, typer.Option(help="Prompt lengths, comma-separated.")] = "1,5,20,100",
    init: Annotated[str, typer.Option(help="Initialisations: random, vocab, labels, text.")] = "random,vocab,labels",
    placement: Annotated[str, typer.Option(help="Placements: prefix, suffix.")] = "prefix",
    search: Annotated[str, typer.Option(help="grid (every combination), random or tpe (optuna's samplers; "
                                             "need --trials).")] = "grid",
    trials: Annotated[Optional[int], typer.Option(help="Trials to run (grid: at most its size).")] = None,
    budget_steps: Annotated[int, typer.Option(help="Optimiser steps per trial.")] = 60,
    evals: Annotated[int, typer.Option(help="Validations per trial (the pruner looks at each).")] = 3,
    prune: Annotated[bool, typer.Option("--prune/--no-prune", help="Stop trials below the median of earlier "
                                                                   "trials at the same validation step.")] = True,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per step.  [default: 16]")] = None,
    eval_limit: Annotated[int, typer.Option(help="Validation rows per evaluation (0 = all).")] = 300,
    seed: Annotated[Optional[int], typer.Option(help="Seed: the same data order and init draws for every trial.  "
                                                     "[default: 0]")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, fp32 or bf16.  [default: auto]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML of fixed train options (template, max length, "
                                                        "label words, ...); flags given here win.")] = None,
    output: Annotated[Path, typer.Option(help="Sweep folder: study.journal, sweep.json/.md/.png, best.yaml, "
                                              "trials/. Run again with the same folder to continue.")] = Path(
        "runs/sweep"),
    storage: Annotated[Optional[str], typer.Option(help="postgresql://user:password@host:5432/database: workers on "
                                                        "any machines share one study (run the same command on "
                                                        "each). Needs softprompt[sweep-db].  [default: a journal "
                                                        "file in --output, one worker]")] = None,
    study: Annotated[str, typer.Option(help="Study name in the --storage database: one per sweep.")] = STUDY_NAME,
    heartbeat: Annotated[int, typer.Option(help="With --storage: seconds between a worker's signs of life; a trial "
                                                "silent for two of them is marked failed and run again.")
                         ] = HEARTBEAT_SECONDS,
) -> None:
    """Train one prompt per setting at a fixed step budget; print the ranked table and write best.yaml."""

    space = parse_space(lr, num_virtual_tokens, init, placement)
    base = TrainConfig.from_sources(config, model=model, data=data, batch_size=batch_size, eval_limit=eval_limit,
                                    seed=seed, precision=precision)
    run(base, space, output, search=search, trials=trials, budget_steps=budget_steps, evals=evals, prune=prune,
        storage=storage, study_name=study, heartbeat=heartbeat)
    print((output / "sweep.md").read_text())
    if (output / "best.yaml").exists():
        print(f"best config: {output / 'best.yaml'} (softprompt train --config {output / 'best.yaml'})")
