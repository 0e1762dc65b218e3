"""`softprompt train`: train a soft prompt on a frozen backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import OptimizerName, Precision, SchedulerName, TrainConfig
from ..prompts import PromptInit, PromptMethod
from ..protocols import TaskType
from ..template import Placement
from . import app

H = TrainConfig.help


@app.command()
def train(
    model: Annotated[Optional[str], typer.Option(help=H("model") + "  [default: smollm2-135m]")] = None,
    data: Annotated[Optional[str], typer.Option(help=H("data"))] = None,
    train_file: Annotated[Optional[str], typer.Option(help=H("train_file"))] = None,
    validation_file: Annotated[Optional[str], typer.Option(help=H("validation_file"))] = None,
    test_file: Annotated[Optional[str], typer.Option(help=H("test_file"))] = None,
    task: Annotated[Optional[TaskType], typer.Option(help=H("task"))] = None,
    text_field: Annotated[Optional[str], typer.Option(help=H("text_field"))] = None,
    label_field: Annotated[Optional[str], typer.Option(help=H("label_field"))] = None,
    labels: Annotated[Optional[str], typer.Option(help=H("labels") + " Comma-separated.")] = None,
    skip_bad_rows: Annotated[Optional[bool], typer.Option("--skip-bad-rows", help=H("skip_bad_rows"))] = None,
    output: Annotated[Optional[str], typer.Option(help=H("output") + "  [default: runs/prompt]")] = None,
    method: Annotated[Optional[PromptMethod], typer.Option(help=H("method") + "  [default: prompt]")] = None,
    deep_reparam: Annotated[Optional[int], typer.Option(help=H("deep_reparam"))] = None,
    tasks: Annotated[Optional[str], typer.Option(help=H("tasks"))] = None,
    mpt_rank: Annotated[Optional[int], typer.Option(help=H("mpt_rank"))] = None,
    mpt_train_shared: Annotated[Optional[bool], typer.Option("--mpt-train-shared", help=H("mpt_train_shared"))] = None,
    mpt_teachers: Annotated[Optional[str], typer.Option(help=H("mpt_teachers"))] = None,
    mpt_distill_weight: Annotated[Optional[float], typer.Option(help=H("mpt_distill_weight"))] = None,
    mpt_distill_temperature: Annotated[Optional[float], typer.Option(help=H("mpt_distill_temperature"))] = None,
    train_per_class: Annotated[Optional[int], typer.Option(help=H("train_per_class"))] = None,
    num_virtual_tokens: Annotated[Optional[int], typer.Option(help=H("num_virtual_tokens"))] = None,
    placement: Annotated[Optional[Placement], typer.Option(help=H("placement"))] = None,
    template: Annotated[Optional[str], typer.Option(help=H("template"))] = None,
    label_words: Annotated[Optional[list[str]], typer.Option(
        help=H("label_words") + " Repeat the flag or quote several in one.")] = None,
    init: Annotated[Optional[PromptInit], typer.Option(help=H("init") + "  [default: labels]")] = None,
    init_text: Annotated[Optional[str], typer.Option(help=H("init_text"))] = None,
    init_from: Annotated[Optional[str], typer.Option(help=H("init_from"))] = None,
    optimizer: Annotated[Optional[OptimizerName], typer.Option(help=H("optimizer"))] = None,
    lr: Annotated[Optional[float], typer.Option(help=H("lr") + "  [default: 0.03]")] = None,
    head_lr: Annotated[Optional[float], typer.Option(help=H("head_lr"))] = None,
    vpt_deep: Annotated[Optional[bool], typer.Option("--vpt-deep", help=H("vpt_deep"))] = None,
    coop_class_specific: Annotated[Optional[bool], typer.Option("--coop-class-specific",
                                                                help=H("coop_class_specific"))] = None,
    coop_class_token_position: Annotated[Optional[str], typer.Option(help=H("coop_class_token_position"))] = None,
    encoder_prompt_tokens: Annotated[Optional[int], typer.Option(help=H("encoder_prompt_tokens"))] = None,
    pooling: Annotated[Optional[str], typer.Option(help=H("pooling") + "  [default: mean]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help=H("weight_decay"))] = None,
    warmup_ratio: Annotated[Optional[float], typer.Option(help=H("warmup_ratio"))] = None,
    scheduler: Annotated[Optional[SchedulerName], typer.Option(help=H("scheduler"))] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option(help=H("max_grad_norm"))] = None,
    max_rollbacks: Annotated[Optional[int], typer.Option(help=H("max_rollbacks"))] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help=H("checkpoint_every") + "  [default: 50]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=H("batch_size") + "  [default: 16]")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help=H("grad_accum"))] = None,
    length_bucketing: Annotated[Optional[bool], typer.Option("--length-bucketing/--no-length-bucketing",
                                                             help=H("length_bucketing"))] = None,
    epochs: Annotated[Optional[float], typer.Option(help=H("epochs") + "  [default: 1]")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help=H("max_steps"))] = None,
    max_length: Annotated[Optional[int], typer.Option(help=H("max_length") + "  [default: 128]")] = None,
    log_every: Annotated[Optional[int], typer.Option(help=H("log_every") + "  [default: 10]")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help=H("eval_every") + "  [default: 100]")] = None,
    eval_limit: Annotated[Optional[int], typer.Option(help=H("eval_limit") + "  [default: 500]")] = None,
    patience: Annotated[Optional[int], typer.Option(help=H("patience"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=H("seed"))] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help=H("compile"))] = None,
    precision: Annotated[Optional[Precision], typer.Option(help=H("precision"))] = None,
    device: Annotated[Optional[str], typer.Option(help=H("device"))] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option(
        "--gradient-checkpointing/--no-gradient-checkpointing", help=H("gradient_checkpointing"))] = None,
    load_in: Annotated[Optional[str], typer.Option(help=H("load_in"))] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of options (flags given here win).")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="Continue the run in this folder from its checkpoint.pt (its own settings; no other options).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the memory this run needs (weights, prompt and "
                                                            "optimiser, activations) without loading weights; "
                                                            "train nothing.")] = False,
) -> None:
    """Train a soft prompt; writes OUTPUT/prompt.safetensors (best by validation), metrics.jsonl, training.png
    and config.yaml, then prints a JSON summary."""
    options = dict(locals())  # first line: only the parameters
    options.pop("config"), options.pop("quiet"), options.pop("resume"), options.pop("dry_run")
    import json

    from ..errors import ConfigError
    from ..training import resume as resume_training
    from ..training import train as run_training

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
            from ..tools.memory import estimate_training_memory

            print(estimate_training_memory(cfg).table())
            return
        if cfg.method is PromptMethod.MULTITASK:
            from ..training.loop import train_multitask

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
    from accelerate import PartialState

    if PartialState().is_main_process:  # one summary under `accelerate launch`
        print(json.dumps(summary))
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every process leaves the group before exiting: a process that exits while another still holds the
        # group's threads can abort at shutdown ("terminate called without an active exception").
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
