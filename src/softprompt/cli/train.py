"""`softprompt train`: train a soft prompt on a frozen backbone. Its option flags are generated from
`TrainConfig`'s declarations (`cli/options.py`); only the flags that are not run options are declared here."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import TrainConfig
from ..errors import ConfigError
from ..methods import METHODS
from ..tools.memory import estimate_training_memory
from ..training import resume as resume_training
from ..training import train as run_training
from ..training.loop import train_multitask
from . import app
from .options import config_parameters

RUN_CONTROL = "Run control"


def train(*, config: Annotated[Optional[Path], typer.Option(
              help="YAML file of options (flags given here win); a run's own config.yaml reproduces it.",
              rich_help_panel=RUN_CONTROL)] = None,
          resume: Annotated[Optional[Path], typer.Option(
              help="Continue the run in this folder from its checkpoint.pt (its own settings; no other options).",
              rich_help_panel=RUN_CONTROL)] = None,
          quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.", rich_help_panel=RUN_CONTROL)] = False,
          dry_run: Annotated[bool, typer.Option(
              "--dry-run", help="Print the memory this run needs (weights, prompt and optimiser, activations) "
                                "without loading weights; train nothing.", rich_help_panel=RUN_CONTROL)] = False,
          **options: Any) -> None:
    """Train a soft prompt; writes OUTPUT/prompt.safetensors (best by validation), metrics.jsonl, training.png
    and config.yaml, then prints a JSON summary."""


    if resume is not None:
        given = sorted(k for k, v in options.items() if v is not None)
        if given or config is not None:
            raise ConfigError(f"--resume continues a run with the settings it started with; drop "
                              f"{', '.join('--' + k.replace('_', '-') for k in given) or '--config'}")
        result = resume_training(resume, progress=not quiet)
    else:
        if options["label_words"] is not None:
            options["label_words"] = tuple(options["label_words"])
        cfg = TrainConfig.from_sources(config, **options)
        if dry_run:
            print(estimate_training_memory(cfg).table())
            return
        if METHODS[cfg.method].many_tasks:
            shared = train_multitask(cfg, progress=not quiet)
            print(json.dumps({"shared": str(shared.shared_path), "tasks": {k: str(v) for k, v in
                                                                          shared.task_paths.items()},
                              "best_step": shared.best_step, "trainable_params": shared.trainable_params,
                              "train_seconds": round(shared.train_seconds, 1),
                              "validation": shared.best_validation}))
            return
        result = run_training(cfg, progress=not quiet)
    summary = {"prompt": str(result.prompt_path), "best_step": result.best_step, "steps": result.steps,
               "train_seconds": round(result.train_seconds, 1), "validation": result.best_validation}
    from accelerate import PartialState  # start-up time

    if PartialState().is_main_process:  # one summary under `accelerate launch`
        print(json.dumps(summary))
    import torch.distributed  # only under a distributed launch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every process leaves the group before exiting: a process that exits while another still holds the
        # group's threads can abort at shutdown ("terminate called without an active exception").
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# The signature typer reads: the flags above, then one per TrainConfig option (generated, grouped in panels).
_own = [p for p in inspect.signature(train, eval_str=True).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
train.__signature__ = inspect.Signature(config_parameters() + _own)  # type: ignore[attr-defined]
app.command()(train)
