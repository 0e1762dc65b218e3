"""The training loop, top to bottom: setup, then step / log / evaluate / keep the best prompt / stop.

Only the soft prompt trains. The backbone is frozen (and may run in bf16); the prompt's master weights stay
fp32. accelerate places tensors on the device so the same loop scales out later.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from tqdm.auto import tqdm

from ..config import OptimizerName, TrainConfig
from ..data import TaskData, load_task
from ..errors import ConfigError
from ..evaluation import evaluate, primary_metric
from ..formats import atomic_write, save_prompt
from ..hub import load_backbone, resolve_precision
from ..kinds import build_prompted_model
from ..kinds.text import resolved_placement
from ..prompts import PromptMethod
from ..protocols import Backbone, PromptedTask, TaskType
from .checkpoint import (
    BatchStream,
    clear_interrupted_writes,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .guard import DivergenceGuard
from .plot import plot_history

LOG_EVERY = 10


@dataclass
class TrainResult:
    model: PromptedTask
    output: Path
    prompt_path: Path
    best_step: int
    best_validation: dict
    steps: int
    train_seconds: float
    history: list[dict] = field(default_factory=list)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters (the best state so far)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _restore(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


def per_class(rows: list[dict], label_field: str, k: int, seed: int) -> list[dict]:
    """A seeded few-shot subset: up to `k` rows of each label (all of a label's rows if it has fewer)."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in sorted({str(r[label_field]) for r in rows}):
        of_label = [i for i, r in enumerate(rows) if str(r[label_field]) == label]
        picks = torch.randperm(len(of_label), generator=generator)[:k].tolist()
        chosen += [of_label[p] for p in picks]
    return [rows[i] for i in sorted(chosen)]


def _param_groups(config: TrainConfig, named: list[tuple[str, torch.Tensor]]) -> list[dict]:
    """One group at --lr; a classification head (`head.*`) in its own group at --head-lr when given."""
    head = [p for n, p in named if n.startswith("head.")]
    if config.head_lr is None or not head:
        return [{"params": [p for _, p in named]}]
    return [{"params": [p for n, p in named if not n.startswith("head.")]}, {"params": head, "lr": config.head_lr}]


def _optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer is OptimizerName.ADAFACTOR:
        from transformers.optimization import Adafactor
        return Adafactor(params, lr=config.lr, weight_decay=config.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _fsdp_requested(accelerator) -> bool:
    """An FSDP launch: accelerate says so (GPUs), or its launcher's environment does (CPU processes, where
    accelerate reports plain multi-CPU)."""
    import os

    from accelerate.utils import DistributedType

    return (accelerator.distributed_type == DistributedType.FSDP
            or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"))


def _deepspeed_zero_config() -> dict[str, Any] | None:
    """The `zero_optimization` section of a DeepSpeed launch (`accelerate launch` with a DeepSpeed config sets
    ACCELERATE_USE_DEEPSPEED in its processes), else None. A `deepspeed_config_file` wins over `zero_stage`."""
    import os

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() not in ("1", "true"):
        return None
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path:
        try:
            section = dict(json.loads(Path(path).read_text()).get("zero_optimization", {}))
        except (OSError, ValueError) as err:
            raise ConfigError(f"DeepSpeed config file {path}: {err}") from err
    else:
        section = {"stage": int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0"))}
    if int(section.get("stage", 0)) != 3:
        raise ConfigError(f"DeepSpeed ZeRO stage {section.get('stage', 0)} shards optimiser state and gradients, which "
                          "a frozen backbone has none of: use stage 3 (deepspeed_zero3.yaml) or data_parallel.yaml")
    return section


def _log(path: Path, record: dict, main: bool = True) -> None:
    if main:
        with path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def _reduce_gradients(params: list[torch.Tensor], world: int) -> None:
    """Average the trainable parameters' gradients over the processes: one all-reduce of one flat tensor.

    Only these (the prompt's, for prompt tuning) cross the wire; the frozen backbone has no gradients.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for param, grad in zip(params, grads):
        param.grad = flat[offset:offset + grad.numel()].view_as(param).to(param.dtype)
        offset += grad.numel()


def _mean_over_processes(values: list[float], world: int, device: torch.device) -> list[float]:
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return (tensor / world).tolist()


def resume(run_dir: str | Path, *, progress: bool = True, **kwargs: Any) -> TrainResult:
    """Continue the run in `run_dir` from its last checkpoint, to the same end an uninterrupted run reaches.

    The config comes from the checkpoint (the run folder may have moved); `kwargs` go to `train` (a baseline
    passes its `model` and `save` again).
    """
    state = load_checkpoint(run_dir)
    clear_interrupted_writes(run_dir)
    config = TrainConfig(**{**state["config"], "output": str(run_dir)})
    return train(config, progress=progress, resume_state=state, **kwargs)


def train(config: TrainConfig, *, backbone: Backbone | None = None, task: TaskData | None = None,
          progress: bool = True, model: PromptedTask | None = None,
          save: Callable[[Path, PromptedTask, dict], Path] | None = None,
          resume_state: dict[str, Any] | None = None,
          on_validation: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train a soft prompt as `config` says; writes the run directory and returns the best model.

    The loop trains whatever parameters of `model` require gradients: by default the prompt of the model
    `config` describes; a baseline (LoRA, full fine-tuning, a linear probe: `training.methods`) passes its own
    model and a `save(out_dir, model, metadata) -> path` that writes its artefact. Every
    `config.checkpoint_every` steps the whole run state goes to OUT/checkpoint.pt; `resume_state` (see
    `resume`) continues from one. `on_validation(step, result)` is called after every validation (a sweep
    reports to its pruner there; an exception it raises stops the run).

    >>> result = train(TrainConfig(data="rotten_tomatoes", output="runs/rt", max_steps=200))   # doctest: +SKIP
    >>> result.best_validation["accuracy"]                                                      # doctest: +SKIP
    0.84
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    if config.method is PromptMethod.MULTITASK:
        raise ConfigError("--method multitask trains several tasks at once: call softprompt.train_multitask "
                          "(the CLI does)")
    # ---- setup ---------------------------------------------------------------------------------------------
    on_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    zero = _deepspeed_zero_config()  # a DeepSpeed launch: the loop keeps its optimiser; DeepSpeed only partitions
    accelerator = Accelerator(cpu=on_cpu)  # cpu=True also makes several CPU processes one gloo group
    # No `accelerator.prepare`: under DeepSpeed accelerate's backward expects an engine, so call the loss's own.
    backward = (lambda loss: loss.backward()) if zero is not None else accelerator.backward
    device = torch.device(config.device) if config.device.startswith("cuda:") else accelerator.device
    # Data parallel (`accelerate launch --num_processes N`): every process holds the backbone and the prompt,
    # takes every N-th row of each global batch (batch_size x N rows), and the prompt's gradients are averaged.
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    set_seed(config.seed)
    # Data first: a bad row is reported before a large backbone is loaded.
    if task is None:
        task = load_task(config.data, train_file=config.train_file, validation_file=config.validation_file,
                         test_file=config.test_file, task=config.task.value, text_fields=config.text_fields,
                         label_field=config.label_field, labels=config.labels, skip_bad_rows=config.skip_bad_rows)
    if backbone is None:
        dtype = resolve_precision(config.precision.value, device)
        backbone = load_backbone(config.model, dtype=dtype, device=device, load_in=config.load_in)
    if world > 1 and _fsdp_requested(accelerator):  # `accelerate launch --config_file examples/accelerate/fsdp.yaml`
        if model is not None:
            raise ConfigError("a sharded backbone (FSDP) trains prompts only, not the weight-training baselines")
        from torch.distributed.device_mesh import init_device_mesh

        split = backbone.shard(init_device_mesh(device.type, (world,)))
        if main:
            print(f"softprompt: backbone sharded over {world} processes: {split}", flush=True)
    elif world > 1 and zero is not None:  # `accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml`
        if model is not None:
            raise ConfigError("a sharded backbone (DeepSpeed ZeRO-3) trains prompts only, not the weight-training "
                              "baselines")
        if config.compile:
            raise ConfigError("--compile is not supported with a DeepSpeed ZeRO-3 backbone")
        split = backbone.shard_zero3(zero)
        if main:
            print(f"softprompt: backbone partitioned (DeepSpeed ZeRO-3) over {world} processes: {split}", flush=True)
    if task.skipped_rows:
        print(f"softprompt: skipped {task.skipped_rows} bad data rows (--skip-bad-rows)", flush=True)
    train_rows = task.split("train")
    if config.train_per_class:
        train_rows = per_class(train_rows, task.label_field, config.train_per_class, config.seed)
    if config.compile:
        backbone.compile_for_training()
    if config.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    model = model if model is not None else build_prompted_model(config, backbone, task)
    model.train()
    named_trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.numel()]
    trainable = [p for _, p in named_trainable]
    if not trainable:
        raise ConfigError("the model has no trainable parameters (a zero-shot template trains nothing)")
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    if main:
        metrics_path.unlink(missing_ok=True)  # a resumed run rewrites it from the checkpoint's history
    save_file = save or (lambda folder, m, extra: save_prompt(folder / "prompt.safetensors", m, **extra))

    def write(folder: Path, m: PromptedTask, extra: dict) -> Path:  # one writer: the main process
        if world == 1:
            return save_file(folder, m, extra)
        written = [save_file(folder, m, extra) if main else None]
        torch.distributed.broadcast_object_list(written, src=0)  # also: no process runs ahead of the file
        return written[0]

    steps_per_epoch = math.ceil(len(train_rows) / (config.batch_size * world * config.grad_accum))
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    optimizer = _optimizer(config, _param_groups(config, named_trainable))
    compute_dtype = getattr(backbone, "autocast_dtype", None) or backbone.dtype
    scaler = torch.amp.GradScaler(device.type) if compute_dtype == torch.float16 else None  # fp16 only
    scheduler = get_scheduler(config.scheduler.value, optimizer,
                              num_warmup_steps=int(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    placement = ("none" if config.method is PromptMethod.DEEP
                 else resolved_placement(config, config.template or task.default_template).value)
    resolved = {**config.to_dict(), "template": model.template_source, "placement": placement,
                "num_virtual_tokens": model.prompt.num_virtual_tokens, "backbone_dtype": str(backbone.dtype),
                "total_steps": total_steps, "labels": list(task.labels) if task.labels else None,
                "processes": world}
    if main:
        atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(yaml.safe_dump(resolved, sort_keys=False)))
    lengths = [sum(len(v) for f in model.input_fields if isinstance(v := row[f], str)) for row in train_rows]
    stream = BatchStream(lengths, config.batch_size * world, config.seed, config.length_bucketing)

    def validate(step: int) -> dict:
        result = evaluate(model, task.split("validation"), label_field=task.label_field,
                          batch_size=max(config.batch_size, 32), limit=config.eval_limit)
        record = {"step": step, "split": "validation", **result}
        history.append(record)
        _log(metrics_path, record, main)
        return result

    # ---- loop ----------------------------------------------------------------------------------------------
    history: list[dict] = []
    best_score, best_step, best_result = -math.inf, 0, {}
    best_state = _snapshot(model)
    evals_without_gain, train_seconds, seen = 0, 0.0, 0
    running_loss, running_acc, running_n, last_loss = 0.0, 0.0, 0, math.nan
    bar = tqdm(total=total_steps, desc="training", disable=not (progress and main), dynamic_ncols=True)
    guard = DivergenceGuard(model, optimizer, scheduler, max_rollbacks=config.max_rollbacks)
    step = 0
    if resume_state is not None:
        if resume_state.get("processes", 1) != world:
            raise ConfigError(f"--resume {out}: the run was checkpointed with {resume_state.get('processes', 1)} "
                              f"process(es) and continues with {world}: launch it the same way")
        trainable_names = [n for n, p in model.named_parameters() if p.requires_grad and p.numel()]
        if sorted(resume_state["trainable"]) != sorted(trainable_names):
            raise ConfigError(f"--resume {out}: the checkpoint's trainable parameters do not match this model's "
                              f"({len(resume_state['trainable'])} vs {len(trainable_names)} tensors)")
        _restore(model, resume_state["trainable"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        guard.load_state_dict(resume_state["guard"])
        if scaler is not None and "scaler" in resume_state:
            scaler.load_state_dict(resume_state["scaler"])
        stream.load_state_dict(resume_state["stream"])
        loop = resume_state["loop"]
        history = loop["history"]
        best_score, best_step, best_result = loop["best_score"], loop["best_step"], loop["best_result"]
        best_state, evals_without_gain = loop["best_state"], loop["evals_without_gain"]
        train_seconds, seen, last_loss = loop["train_seconds"], loop["seen"], loop["last_loss"]
        running_loss, running_acc, running_n = loop["running_loss"], loop["running_acc"], loop["running_n"]
        step = resume_state["step"]
        if main:
            atomic_write(metrics_path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in history)))
        set_rng_state(resume_state["rng"])
        bar.update(step)
        bar.write(f"softprompt: resumed {out} at step {step} of {total_steps}")

    def checkpoint() -> None:
        if not main:
            return
        save_checkpoint(out, {
            "config": config.to_dict(), "step": step, "total_steps": total_steps, "processes": world,
            "trainable": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.numel()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "guard": guard.state_dict(),
            "stream": stream.state_dict(), "rng": rng_state(),
            **({"scaler": scaler.state_dict()} if scaler is not None else {}),
            "loop": {"history": history, "best_score": best_score, "best_step": best_step, "best_result": best_result,
                     "best_state": best_state, "evals_without_gain": evals_without_gain,
                     "train_seconds": train_seconds, "seen": seen, "last_loss": last_loss,
                     "running_loss": running_loss, "running_acc": running_acc, "running_n": running_n}})

    for step in range(step + 1, total_steps + 1):
        started = time.perf_counter()
        losses, accuracies = [], []
        for _ in range(config.grad_accum):
            chosen = next(stream)
            rows = [train_rows[i] for i in chosen[rank::world]]
            seen += len(chosen)
            if not rows:  # a short last batch with fewer rows than processes: this one adds nothing
                losses.append(0.0)
                accuracies.append(0.0)
                continue
            batch = {k: v.to(device) for k, v in model.make_batch(rows, task.label_field).items()}
            loss, figures = model.loss(batch)
            share = len(rows) * world / len(chosen)  # rows' weight in the global batch's mean
            scaled = loss * share / config.grad_accum
            backward(scaler.scale(scaled) if scaler is not None else scaled)
            losses.append(loss.item() * share)
            accuracies.append(figures.get("accuracy", 0.0) * share)
        if world > 1:
            _reduce_gradients(trainable, world)
            losses = _mean_over_processes(losses, world, device)
            accuracies = _mean_over_processes(accuracies, world, device)
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = (torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                     if config.max_grad_norm > 0 else
                     torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainable if p.grad is not None])))
        overflow = scaler is not None and not math.isfinite(float(grad_norm)) and all(map(math.isfinite, losses))
        reason = None if overflow else guard.problem(losses, float(grad_norm))
        if overflow:  # fp16 loss scale too high: the scaler skips this step and lowers the scale
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        elif reason is not None:  # drop the step: back to the last good state, at a lower learning rate
            optimizer.zero_grad(set_to_none=True)
            record = guard.roll_back(step, reason)
            history.append(record)
            _log(metrics_path, record, main)
            bar.write(f"softprompt: step {step}: {reason}; rolled back, learning rate now {record['lr']:.3g}")
        else:
            running_loss += sum(losses)
            running_acc += sum(accuracies)
            running_n += len(losses)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - started

        if (step % LOG_EVERY == 0 or step == total_steps) and running_n:
            record = {"step": step, "split": "train", "loss": running_loss / running_n,
                      "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm), "examples": seen,
                      "train_seconds": round(train_seconds, 3)}
            if model.task is TaskType.CLASSIFICATION:
                record["accuracy"] = running_acc / running_n
            history.append(record)
            _log(metrics_path, record, main)
            last_loss = record["loss"]
            bar.set_postfix(loss=f"{last_loss:.4f}", best=f"{best_score:.4f}" if best_result else "-")
            running_loss, running_acc, running_n = 0.0, 0.0, 0
            guard.remember()
        bar.update(1)

        if (config.eval_every and step % config.eval_every == 0) or step == total_steps:
            result = validate(step)
            if primary_metric(result) > best_score:
                best_score, best_step, best_result = primary_metric(result), step, result
                best_state = _snapshot(model)
                evals_without_gain = 0
                write(out, model, {"init": config.init_name, "placement": placement,
                                   "training": {"best_step": step, "validation": result,
                                                "train_seconds": round(train_seconds, 3), "in_progress": True}})
            else:
                evals_without_gain += 1
            bar.set_postfix(loss=f"{last_loss:.4f}", val=f"{primary_metric(result):.4f}", best=f"{best_score:.4f}")
            if on_validation is not None:
                on_validation(step, result)
            if config.patience and evals_without_gain >= config.patience:
                bar.write(f"softprompt: early stop at step {step}: no validation gain in {config.patience} evaluations")
                break
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps:
            checkpoint()
    bar.close()

    # ---- finish: the best prompt, its file, the picture ---------------------------------------------------
    _restore(model, best_state)
    training = {"best_step": best_step, "validation": best_result, "steps": step, "examples_seen": seen,
                "train_seconds": round(train_seconds, 3), "data": task.name, "train_examples": len(train_rows),
                "lr": config.lr, "batch_size": config.batch_size, "seed": config.seed,
                "trainable_params": sum(p.numel() for p in trainable)}
    prompt_path = write(out, model, {"init": config.init_name, "placement": placement, "training": training})
    if main:
        plot_history(history, out / "training.png", title=f"{backbone.name} / {task.name} / "
                     f"{model.prompt.num_virtual_tokens} virtual tokens")
    return TrainResult(model, out, prompt_path, best_step, best_result, step, train_seconds, history)
