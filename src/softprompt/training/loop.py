"""The training loop, top to bottom: setup, then step / log / evaluate / keep the best prompt / stop.

Only the prompt (and a kind's small head) trains. The backbone is frozen (and may run in bf16); the trainable
master weights stay fp32. `train` sets up the processes (`training.distributed`), the data and the backbone,
then builds a `Job` -- one task's prompted model, or several tasks' through `training.multitask` -- and runs
the one loop: its state is one `RunState` (`training.state`) whose state dict is the checkpoint, so every job
gets the divergence guard, `--resume`, gradient accumulation and data parallelism.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from ..config import RUN_SECTION, CompileMode, OptimizerName, TrainConfig
from ..cpu import keep_freed_memory
from ..data import TaskData, load_task
from ..errors import ConfigError
from ..evaluation import evaluate, primary_metric
from ..formats import atomic_write, check_output_path, save_prompt
from ..hub import load_backbone, resolve_precision
from ..kinds.table import build_prompted_model, kind_of
from ..kinds.text import resolved_placement
from ..progress import bar as progress_bar
from ..progress import stage_line
from ..methods import METHODS
from ..protocols import Backbone, Capability, Prompted, TaskType
from .card import model_card
from .checkpoint import BatchStream, clear_interrupted_writes, load_checkpoint, save_checkpoint
from .distributed import Processes, setup_processes
from .guard import DivergenceGuard
from .multitask import MultitaskResult, load_tasks, multitask_job, parse_tasks
from .plot import plot_history
from .state import Job, Progress, RunState, restore, snapshot, trainable_parameters
from .tracking import check_available as check_tracker
from .tracking import open_tracker


@dataclass
class TrainResult:
    model: Prompted
    output: Path
    prompt_path: Path
    best_step: int
    best_validation: dict
    steps: int
    train_seconds: float
    history: list[dict] = field(default_factory=list)


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
    """One group at --lr; a classification head (`head.*`) in its own group at --head-lr when given, and the
    parameters the method trains at their own rate (DePT's offset at --dept-lr: its table entry's `own_rates`)."""
    own_rates = METHODS[config.method].own_rates

    def own_rate(name: str) -> float | None:
        if name.startswith("head."):
            return config.head_lr
        option = own_rates.get(name.rpartition(".")[2])
        return config.option(option) if option else None

    groups: dict[float | None, list[torch.Tensor]] = {None: []}
    for name, param in named:
        groups.setdefault(own_rate(name), []).append(param)
    return [{"params": params} if lr is None else {"params": params, "lr": lr}
            for lr, params in groups.items() if params]


def _optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer is OptimizerName.ADAFACTOR:
        from transformers.optimization import Adafactor  # start-up time
        return Adafactor(params, lr=config.lr, weight_decay=config.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


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
          progress: bool = True, model: Prompted | None = None,
          save: Callable[[Path, Prompted, dict], Path] | None = None,
          resume_state: dict[str, Any] | None = None,
          on_validation: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train a soft prompt as `config` says; writes the run directory and returns the best model.

    The loop trains whatever parameters of `model` require gradients: by default the prompt of the model
    `config` describes; a baseline (LoRA, full fine-tuning, a linear probe: `training.baselines`) passes its own
    model and a `save(out_dir, model, metadata) -> path` that writes its artefact. `--method multitask` trains
    a shared prompt and a factor per task (`training.multitask`) through the same loop. Every
    `config.checkpoint_every` steps the whole run state goes to OUT/checkpoint.pt; `resume_state` (see
    `resume`) continues from one. `on_validation(step, result)` is called after every validation (a sweep
    reports to its pruner there; an exception it raises stops the run).

    Examples:
        >>> result = train(TrainConfig(data="rotten_tomatoes", output="runs/rt", max_steps=200))   # doctest: +SKIP
        >>> result.best_validation["accuracy"]                                                      # doctest: +SKIP
        0.84
    """
    from accelerate.utils import set_seed  # seeds every library the run touches

    multitask = METHODS[config.method].many_tasks
    check_output_path(config.output, folder=True)
    check_tracker(config.report_to)
    processes = setup_processes(config)
    set_seed(config.seed)
    # Data first: a bad row is reported before a large backbone is loaded.
    tasks = load_tasks(config) if multitask else None
    if task is None and not multitask:
        task = load_task(config.data, train_file=config.train_file, validation_file=config.validation_file,
                         test_file=config.test_file, task=config.task.value, text_fields=config.text_fields,
                         label_field=config.label_field, labels=config.labels, skip_bad_rows=config.skip_bad_rows)
    if backbone is None:
        dtype = resolve_precision(config.precision.value, processes.device)
        backbone = load_backbone(config.model, dtype=dtype, device=processes.device, load_in=config.load_in)
    processes.shard(backbone, trains_weights=model is not None, compile=config.compile is CompileMode.LAYERS)
    if config.gradient_checkpointing:
        kind_of(backbone).require(Capability.GRADIENT_CHECKPOINTING, "--gradient-checkpointing")
        backbone.enable_gradient_checkpointing()
    if multitask:
        job = multitask_job(config, backbone, tasks, processes.world)
    else:
        job = _single_task_job(config, backbone, task, processes.world, model, save)
    return _run(config, job, backbone, processes, progress=progress, resume_state=resume_state,
                on_validation=on_validation)


def _single_task_job(config: TrainConfig, backbone: Backbone, task: TaskData, world: int,
                     model: Prompted | None, save: Callable[[Path, Prompted, dict], Path] | None) -> Job:
    if task.skipped_rows:
        print(f"softprompt: skipped {task.skipped_rows} bad data rows (--skip-bad-rows)", flush=True)
    train_rows = task.split("train")
    if config.train_per_class:
        train_rows = per_class(train_rows, task.label_field, config.train_per_class, config.seed)
    model = model if model is not None else build_prompted_model(config, backbone, task)
    placement = ("none" if not METHODS[config.method].in_input
                 else resolved_placement(config, config.template or task.default_template).value)
    lengths = [sum(len(v) for f in model.input_fields if isinstance(v := row[f], str)) for row in train_rows]

    def validate() -> dict:
        return evaluate(model, task.split("validation"), label_field=task.label_field,
                        batch_size=max(config.batch_size, 32), limit=config.eval_limit)

    return Job(
        name=task.name, model=model, train_rows=train_rows, label_field=task.label_field,
        stream=BatchStream(lengths, config.batch_size * world, config.seed, config.length_bucketing),
        validate=validate,
        save=save or (lambda folder, m, extra: save_prompt(folder / "prompt.safetensors", m, **extra)),
        resolved={"template": model.template_source, "placement": placement,
                  "num_virtual_tokens": model.prompt.num_virtual_tokens,
                  "labels": list(task.labels) if task.labels else None},
        metadata={"init": config.init_name, "placement": placement})


# `--compile auto` compiles the decoder block when the saved step time pays back the ~25 s cold compile (2-core
# CPU): a backbone this large steps in ~1 s eager and ~0.7 s compiled (benchmarks/training/vs_peft.py), so 100 steps.
AUTO_COMPILE_MIN_PARAMETERS = 50_000_000
AUTO_COMPILE_MIN_STEPS = 100


def _compile_layers(config: TrainConfig, job: Job, backbone: Backbone, world: int, steps: int, *,
                    trains_weights: bool, say: Callable[[str], None]) -> str:
    """Apply `--compile`; returns what was done, in words (logged, and kept in config.yaml's `resolved`)."""
    compile_for_training = getattr(backbone, "compile_for_training", None)
    if config.compile is CompileMode.OFF:
        return "off"
    if compile_for_training is None:
        if config.compile is CompileMode.LAYERS:
            raise ConfigError(f"--compile layers: backbone '{backbone.name}' ({backbone.kind.value}) has no decoder "
                              f"block to compile; use --compile off")
        return f"off (auto: a {backbone.kind.value} backbone)"
    if config.compile is CompileMode.AUTO:
        parameters = sum(p.numel() for p in backbone.model.parameters())
        why = ("several processes" if world > 1 else
               "gradient checkpointing" if config.gradient_checkpointing else
               "the baseline trains weights" if trains_weights else
               f"placement {job.resolved.get('placement')} (only a prefix placement trains without a cache)"
               if job.resolved.get("placement") != "prefix" else
               f"{steps} steps < {AUTO_COMPILE_MIN_STEPS}" if steps < AUTO_COMPILE_MIN_STEPS else
               f"{parameters / 1e6:.0f}M weights < {AUTO_COMPILE_MIN_PARAMETERS / 1e6:.0f}M"
               if parameters < AUTO_COMPILE_MIN_PARAMETERS else None)
        if why is not None:
            return f"off (auto: {why})"
    say("compiling the decoder block for training steps (~25 s on 2 cores the first time; --compile off skips it)")
    done = compile_for_training()
    say(done)
    return done


def batch_passes(model: Prompted, rows: list, batch: dict, budget: int, label_field: str | None
            ) -> list[tuple[dict, float]]:
    """A batch as one forward/backward pass, or -- when its padded tokens exceed `budget` on a causal LM -- as
    passes over fewer rows each, with each pass's share of the batch's loss: its rows for a row-mean loss
    (classification), its target tokens for a token-mean one (generation), so the summed gradient is the whole
    batch's. Long rows then keep activation memory bounded, and run faster (benchmarks/training/scaling.py)."""
    ids = batch.get("input_ids")
    if (not budget or len(rows) < 2 or not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.numel() <= budget
            or not kind_of(model).can(Capability.SPLIT_PASSES)):
        return [(batch, 1.0)]
    size = math.ceil(len(rows) / min(len(rows), math.ceil(ids.numel() / budget)))
    parts = [model.make_batch(rows[i:i + size], label_field) for i in range(0, len(rows), size)]
    if "labels" in batch:  # the loss is a mean over target tokens (a row's first column never holds one)
        counts = [float((part["labels"][:, 1:] != -100).sum()) for part in parts]
    else:
        counts = [float(part["input_ids"].shape[0]) for part in parts]
    total = sum(counts) or 1.0
    return [(part, count / total) for part, count in zip(parts, counts)]


def _to_device(batch: dict, device: torch.device) -> dict:
    """A batch's tensors on `device` (a multitask batch nests one batch per task)."""
    return {k: _to_device(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}


def _run(config: TrainConfig, job: Job, backbone: Backbone, processes: Processes, *, progress: bool,
         resume_state: dict[str, Any] | None, on_validation: Callable[[int, dict], None] | None) -> TrainResult:
    """setup -> (step -> log -> validate -> checkpoint) per step -> finish."""
    loop = _Loop.setup(config, job, backbone, processes, show=progress, resume_state=resume_state)
    for step in range(loop.tally.step + 1, loop.total_steps + 1):
        loop.tally.step = step
        grad_norm = loop.step(step)
        loop.log_training(step, grad_norm)
        if loop.validates_at(step) and loop.validate(step, on_validation):
            break  # early stop: no validation gain in --patience evaluations
        loop.checkpoint(step)
    return loop.finish()


@dataclass
class _Loop:
    """One run of the training loop: what `setup` builds, what `step` and `validate` change, what `finish` writes.
    Its resumable state is `run` (a `RunState`: the checkpoint); `tally` is `run.progress`, the bookkeeping."""

    config: TrainConfig
    job: Job
    backbone: Backbone
    processes: Processes
    show: bool                                      # progress bar and stage lines (main process only)
    out: Path
    total_steps: int
    trainable: list[torch.nn.Parameter]
    run: RunState
    bar: Any
    tracker: Any
    log_every: int

    @property
    def tally(self) -> Progress:
        return self.run.progress

    @classmethod
    def setup(cls, config: TrainConfig, job: Job, backbone: Backbone, processes: Processes, *, show: bool,
              resume_state: dict[str, Any] | None) -> "_Loop":
        """Output folder, optimiser, scheduler, loss scaler (fp16 only), compiled layers, the resolved config,
        divergence guard, progress bar, tracker; a resumed run's state and metrics."""
        from transformers import get_scheduler  # start-up time

        model, main, world = job.model, processes.main, processes.world
        keep_freed_memory()  # every step frees and re-allocates the same activations: keep them (softprompt.cpu)
        model.train()
        named_trainable = list(trainable_parameters(model).items())
        if not named_trainable:
            raise ConfigError("the model has no trainable parameters (a zero-shot template trains nothing)")
        out = Path(config.output)
        out.mkdir(parents=True, exist_ok=True)
        if main:
            (out / "metrics.jsonl").unlink(missing_ok=True)  # a resumed run rewrites it from the checkpoint's history
        steps_per_epoch = math.ceil(len(job.train_rows) / (config.batch_size * world * config.grad_accum))
        total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
        optimizer = _optimizer(config, _param_groups(config, named_trainable))
        compute_dtype = backbone.autocast_dtype or backbone.dtype
        scaler = torch.amp.GradScaler(processes.device.type) if compute_dtype == torch.float16 else None
        scheduler = get_scheduler(config.scheduler.value, optimizer,
                                  num_warmup_steps=int(config.warmup_ratio * total_steps),
                                  num_training_steps=total_steps)
        compiled = _compile_layers(config, job, backbone, world, total_steps - (resume_state or {}).get("step", 0),
                                   trains_weights=any(p.requires_grad for p in backbone.model.parameters()),
                                   say=lambda line: print(f"softprompt: {line}", file=sys.stderr, flush=True)
                                   if show and main else None)
        # The options as given (`train --config OUT/config.yaml` reproduces the run), then what the run worked out.
        resolved = {**config.to_dict(), RUN_SECTION: {**job.resolved, "backbone_dtype": str(backbone.dtype),
                                                      "compile": compiled,
                                                      "total_steps": total_steps, "processes": world}}
        if main:
            atomic_write(out / "config.yaml",
                         lambda tmp: Path(tmp).write_text(yaml.safe_dump(resolved, sort_keys=False)))
        guard = DivergenceGuard(model, optimizer, scheduler, max_rollbacks=config.max_rollbacks)
        run = RunState(config.to_dict(), total_steps, world, model, optimizer, scheduler, guard, job.stream, scaler,
                       Progress(best_state=snapshot(model)))
        bar = progress_bar(total_steps, "training", show and main, dynamic_ncols=True)
        stage_line(f"training {job.name}: {total_steps} steps, {len(job.train_rows)} training rows -> {out}",
                   show and main)
        if resume_state is not None:
            run.load_state_dict(resume_state, str(out))
            if main:
                atomic_write(out / "metrics.jsonl", lambda tmp: Path(tmp).write_text(
                    "".join(json.dumps(r) + "\n" for r in run.progress.history)))
            bar.update(run.progress.step)
            bar.write(f"softprompt: resumed {out} at step {run.progress.step} of {total_steps}")
        tracker = open_tracker(config.report_to, out, out.name, config.to_dict()) if main else None
        log_every = config.log_every or (10 if total_steps >= 100 else max(1, total_steps // 10))
        return cls(config, job, backbone, processes, show, out, total_steps, [p for _, p in named_trainable], run,
                   bar, tracker, log_every)

    # ---- one optimiser step --------------------------------------------------------------------------------
    def step(self, step: int) -> torch.Tensor:
        """Gradients of the step's whole batch, clipped; then the optimiser steps, or the step is skipped (fp16
        overflow) or rolled back (divergence). Returns the gradient norm before clipping."""
        started = time.perf_counter()
        losses, accuracies, figures = self._gradients()
        optimizer, scaler = self.run.optimizer, self.run.scaler
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
                     if self.config.max_grad_norm > 0 else
                     torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.trainable
                                                           if p.grad is not None])))
        overflow = scaler is not None and not math.isfinite(float(grad_norm)) and all(map(math.isfinite, losses))
        reason = None if overflow else self.run.guard.problem(losses, float(grad_norm))
        if overflow:  # fp16 loss scale too high: the scaler skips this step and lowers the scale
            scaler.step(optimizer)
            scaler.update()
        elif reason is not None:  # drop the step: back to the last good state, at a lower learning rate
            optimizer.zero_grad(set_to_none=True)
            record = self.run.guard.roll_back(step, reason)
            self.log(record)
            self.bar.write(f"softprompt: step {step}: {reason}; rolled back, learning rate now {record['lr']:.3g}")
        else:
            self.tally.add(losses, accuracies, figures)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            self.run.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.tally.train_seconds += time.perf_counter() - started
        return grad_norm

    def _gradients(self) -> tuple[list[float], list[float], dict[str, float]]:
        """Backward passes over the step's batch: `--grad-accum` micro-batches, each split over the processes and
        perhaps into passes of fewer rows (`batch_passes`). The loss weighting, once: every pass's loss is a mean
        over its own rows (or target tokens); it is scaled by `weight` (the pass's share of its process's rows or
        tokens) x `share` (the process's share of the micro-batch, x `world` because the processes' gradients are
        averaged) / `grad_accum` (the micro-batches' mean), so the summed gradient is that of the mean loss over
        the whole batch. Returns each micro-batch's loss and accuracy (means over the processes) and the model's
        other figures, weighted the same way."""
        config, job, processes = self.config, self.job, self.processes
        model, world = job.model, processes.world
        losses, accuracies, figures = [], [], {}
        for _ in range(config.grad_accum):
            chosen = next(job.stream)
            rows = [job.train_rows[i] for i in chosen[processes.rank::world]]
            self.tally.seen += len(chosen)
            if not rows:  # a short last batch with fewer rows than processes: this one adds nothing
                losses.append(0.0)
                accuracies.append(0.0)
                continue
            share = len(rows) * world / len(chosen)
            loss_sum = accuracy_sum = 0.0
            for part, weight in batch_passes(model, rows, model.make_batch(rows, job.label_field),
                                             config.pass_tokens, job.label_field):
                loss, part_figures = model.loss(_to_device(part, processes.device))
                scaled = loss * (weight * share / config.grad_accum)
                processes.backward(self.run.scaler.scale(scaled) if self.run.scaler is not None else scaled)
                loss_sum += loss.item() * weight
                accuracy_sum += part_figures.pop("accuracy", 0.0) * weight
                for name, value in part_figures.items():
                    figures[name] = figures.get(name, 0.0) + value * weight * share
            losses.append(loss_sum * share)
            accuracies.append(accuracy_sum * share)
        processes.reduce_gradients(self.trainable)
        return processes.mean(losses), processes.mean(accuracies), figures

    # ---- logging, validation, checkpoints --------------------------------------------------------------------
    def log(self, record: dict) -> None:
        """One line of metrics.jsonl (and the tracker's), written by the main process; every process keeps it."""
        self.tally.history.append(record)
        if self.processes.main:
            with (self.out / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            if self.tracker is not None:
                self.tracker.log(record)

    def log_training(self, step: int, grad_norm: torch.Tensor) -> None:
        """Every `log_every` steps (and the last): the running means since the last line."""
        tally = self.tally
        if (step % self.log_every == 0 or step == self.total_steps) and tally.running_n:
            mean_loss, mean_accuracy, figures = tally.take_means()
            record = {"step": step, "split": "train", "loss": mean_loss,
                      "lr": self.run.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                      "examples": tally.seen, "train_seconds": round(tally.train_seconds, 3)}
            if self.job.model.task is TaskType.CLASSIFICATION:
                record["accuracy"] = mean_accuracy
            self.log({**record, **figures})
            tally.last_loss = mean_loss
            self.bar.set_postfix(loss=f"{mean_loss:.4f}",
                                 best=f"{tally.best_score:.4f}" if tally.best_result else "-")
            self.run.guard.remember()
        self.bar.update(1)

    def validates_at(self, step: int) -> bool:
        return bool(self.config.eval_every and step % self.config.eval_every == 0) or step == self.total_steps

    def validate(self, step: int, on_validation: Callable[[int, dict], None] | None) -> bool:
        """Evaluate on the validation rows; a new best is kept (and written as the run's prompt file so far).
        True when `--patience` evaluations in a row brought no gain: stop."""
        tally, show = self.tally, self.show and self.processes.main
        result = self.job.validate()
        score = primary_metric(result)
        self.log({"step": step, "split": "validation", **result})
        if score > tally.best_score:
            tally.best_score, tally.best_step, tally.best_result = score, step, result
            tally.best_state = snapshot(self.job.model)
            tally.evals_without_gain = 0
            self._write({"training": {"best_step": step, "validation": result,
                                      "train_seconds": round(tally.train_seconds, 3), "in_progress": True}})
        else:
            tally.evals_without_gain += 1
        self.bar.set_postfix(loss=f"{tally.last_loss:.4f}", val=f"{score:.4f}", best=f"{tally.best_score:.4f}")
        recent = tally.running_loss / tally.running_n if tally.running_n else tally.last_loss  # not logged yet
        stage_line(f"step {step}/{self.total_steps}: loss {recent:.4f}, validation {score:.4f} "
                   f"(best {tally.best_score:.4f} at step {tally.best_step})", show)
        if on_validation is not None:
            on_validation(step, result)
        if self.config.patience and tally.evals_without_gain >= self.config.patience:
            self.bar.write(f"softprompt: early stop at step {step}: no validation gain in {self.config.patience} "
                           "evaluations")
            return True
        return False

    def checkpoint(self, step: int) -> None:
        """Every `--checkpoint-every` steps (not the last): the whole run state, for `--resume`."""
        if (self.config.checkpoint_every and step % self.config.checkpoint_every == 0 and step < self.total_steps
                and self.processes.main):
            save_checkpoint(self.out, self.run.state_dict())

    def _write(self, extra: dict) -> Path:
        """The prompt file with the job's metadata and `extra` (one writer: the main process)."""
        job, model = self.job, self.job.model
        return self.processes.write_once(lambda: job.save(self.out, model, {**job.metadata, **extra}))

    # ---- finish: the best prompt, its file, the picture -------------------------------------------------------
    def finish(self) -> TrainResult:
        self.bar.close()
        config, tally, model, out = self.config, self.tally, self.job.model, self.out
        restore(model, tally.best_state)
        training = {"best_step": tally.best_step, "validation": tally.best_result, "steps": tally.step,
                    "examples_seen": tally.seen, "train_seconds": round(tally.train_seconds, 3),
                    "data": self.job.name, "train_examples": len(self.job.train_rows), "lr": config.lr,
                    "batch_size": config.batch_size, "seed": config.seed,
                    "trainable_params": sum(p.numel() for p in self.trainable)}
        prompt_path = self._write({"training": training})
        if self.tracker is not None:
            self.tracker.finish()
        if self.processes.main:
            plot_history(tally.history, out / "training.png", title=f"{self.backbone.name} / {self.job.name} / "
                         f"{self.job.resolved['num_virtual_tokens']} virtual tokens")
            card = model_card(config, training, self.job.resolved, backbone=self.backbone.name,
                              task=model.task.value, prompt_file=prompt_path.name)
            atomic_write(out / "README.md", lambda tmp: Path(tmp).write_text(card, encoding="utf-8"))
        return TrainResult(model, out, prompt_path, tally.best_step, tally.best_result, tally.step,
                           tally.train_seconds, tally.history)


def train_multitask(config: TrainConfig, *, backbone: Backbone | None = None, progress: bool = True
                    ) -> MultitaskResult:
    """Multitask stage 1 (`config.mpt.tasks`, see `training.multitask`) through the training loop; the shared file,
    one prompt file per source task, and the figures.

    `config` gives the backbone, prompt length, init (`labels` starts the shared prompt from frequent vocabulary
    tokens: the tasks' label words differ), lr, steps, batch size (rows per step, split evenly over the tasks),
    validation and output folder.
    """
    result = train(config.replace(method="multitask"), backbone=backbone, progress=progress)
    tasks = parse_tasks(config.mpt.tasks)
    return MultitaskResult(result.prompt_path, {name: result.output / f"{name}.safetensors" for name in tasks},
                           result.best_step, result.best_validation.get("tasks", {}), result.steps,
                           result.train_seconds, sum(p.numel() for p in trainable_parameters(result.model).values()),
                           result.history)
