"""Multitask prompt tuning (MPT): one shared prompt for many tasks, a small rank-r factor per task.

Task k's prompt is P_k = P ∘ (U_k V_kᵀ): the shared prompt P [n, d] multiplied element-wise by a low-rank
matrix (U_k [n, r], V_k [d, r]; r = 1 by default, starting as all ones so that P_k = P).

- Stage 1, `train_multitask` (`softprompt train --method multitask --tasks rt=rotten_tomatoes,bbc=bbc_news`):
  P and every source task's factor train together; each step mixes rows of every task (each task keeps its own
  template and verbaliser) and the loss is the row-weighted mean over the tasks. Writes `shared.safetensors`
  (P, the factors, and each task's template and labels) and one ordinary prompt file per source task.
- Stage 2, `softprompt train --init-from shared.safetensors --data NEW ...`: a fresh factor for the new task;
  only the factor trains (n·r + d·r numbers: 596 for 20 tokens on SmolLM2), or factor and P with
  `--mpt-train-shared`. The result is saved as an ordinary prompt file (P ∘ UVᵀ), usable everywhere.
- Distillation (optional, `--mpt-teachers bbc=runs/bbc/prompt.safetensors,...`): as in the MPT paper, each source
  task's single-task prompt teaches its view of the shared prompt. Each step adds
  `--mpt-distill-weight · T² · KL(teacher ‖ student)` over the class distributions at temperature T
  (`--mpt-distill-temperature`) to the task's cross-entropy; the teacher runs without gradients on the same rows
  through its own template. (The paper also matches hidden states; the class-distribution term is the one kept.)
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..prompts import TaskPrompt
from ..protocols import TaskType

TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


def parse_tasks(text: str | None) -> dict[str, str]:
    """'rt=rotten_tomatoes,bbc=bbc_news' -> {name: data}; each data is a built-in name or a folder."""
    if not text:
        raise ConfigError("--method multitask needs --tasks name=data,name=data (two or more source tasks)")
    tasks: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, sep, data = item.partition("=")
        if not sep or not data:
            raise ConfigError(f"--tasks: {item!r} is not name=data (e.g. rt=rotten_tomatoes)")
        if not TASK_NAME.match(name):
            raise ConfigError(f"--tasks: task name {name!r}: letters, digits, _ and -, starting with a letter")
        if name in tasks:
            raise ConfigError(f"--tasks names {name!r} twice")
        tasks[name] = data
    if len(tasks) < 2:
        raise ConfigError(f"--tasks gives {len(tasks)} task; multitask prompt tuning needs two or more")
    return tasks


def parse_teachers(text: str | None, tasks: dict[str, str]) -> dict[str, str]:
    """'bbc=runs/bbc/prompt.safetensors,...' -> {task name: prompt file}; names must be among --tasks."""
    if not text:
        return {}
    teachers: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--mpt-teachers: {item!r} is not name=PROMPT.safetensors")
        if name not in tasks:
            raise ConfigError(f"--mpt-teachers: {name!r} is not one of --tasks ({', '.join(tasks)})")
        if name in teachers:
            raise ConfigError(f"--mpt-teachers names {name!r} twice")
        if not Path(path).is_file():
            raise ConfigError(f"--mpt-teachers {name}={path}: no such file (a prompt file from `softprompt train`)")
        teachers[name] = path
    return teachers


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over rows (Hinton et al.'s scaling)."""
    log_student = torch.log_softmax(student.float() / temperature, dim=-1)
    log_teacher = torch.log_softmax(teacher.float() / temperature, dim=-1)
    return temperature ** 2 * torch.nn.functional.kl_div(log_student, log_teacher, log_target=True,
                                                         reduction="batchmean")


def _load_teachers(teachers: dict[str, str], backbone, models: dict) -> dict:
    from ..kinds import load_prompted_model

    loaded = {}
    for name, path in teachers.items():
        teacher = load_prompted_model(path, backbone)  # refuses another backbone with a one-line error
        teacher_labels = list(teacher.labels) if teacher.task is TaskType.CLASSIFICATION else []
        if teacher_labels != list(models[name].labels):
            raise ConfigError(f"--mpt-teachers {name}={path}: its labels {teacher_labels} are not task "
                              f"{name!r}'s {list(models[name].labels)}; give a prompt trained on that task")
        teacher.requires_grad_(False)
        teacher.eval()
        loaded[name] = teacher
    return loaded


@dataclass
class MultitaskResult:
    shared_path: Path
    task_paths: dict[str, Path]
    best_step: int
    best_validation: dict[str, dict]
    steps: int
    train_seconds: float
    trainable_params: int
    history: list[dict] = field(default_factory=list)


def _save_shared(path: Path, shared: torch.Tensor, views: dict[str, TaskPrompt], models: dict, tasks: dict[str, str],
                 training: dict) -> Path:
    from safetensors.torch import save_file

    from ..formats import FORMAT_NAME, atomic_write, prompt_metadata

    first = next(iter(models.values()))
    meta = prompt_metadata(first, init="multitask", training=training)
    meta.update({"method": "multitask", "rank": next(iter(views.values())).rank, "template": None,
                 "verbalizer": None, "labels": None,
                 "tasks": {name: {"data": tasks[name], **m.file_metadata()} for name, m in models.items()}})
    tensors = {"shared_prompt": shared.detach().to("cpu", torch.float32).contiguous()}
    for name, view in views.items():
        tensors[f"task_u.{name}"] = view.u.detach().to("cpu", torch.float32).contiguous()
        tensors[f"task_v.{name}"] = view.v.detach().to("cpu", torch.float32).contiguous()
    header = {"format": FORMAT_NAME, FORMAT_NAME: json.dumps(meta)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def train_multitask(config, tasks: dict[str, str] | None = None, *, backbone=None, progress: bool = True,
                    loaded: dict | None = None) -> MultitaskResult:
    """Stage 1: the shared prompt and every source task's factor, from mixed-task steps.

    `config` (a TrainConfig) gives the backbone, prompt length, init (`labels` starts the shared prompt from
    frequent vocabulary tokens: the tasks' label words differ), lr, steps, batch size (rows per step, split
    evenly over the tasks), validation and output folder. `loaded` may map task names to TaskData.
    """
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from ..data import load_task
    from ..evaluation import evaluate, primary_metric
    from ..formats import atomic_write, save_prompt
    from ..hub import load_backbone, resolve_precision
    from ..kinds import build_prompted_model
    from ..kinds.text import DEFAULT_NUM_VIRTUAL_TOKENS
    from ..prompts import PromptInit, initial_embeddings
    from .checkpoint import BatchStream

    tasks = tasks if tasks is not None else parse_tasks(config.tasks)
    torch.manual_seed(config.seed)
    data = dict(loaded or {})
    for name, source in tasks.items():  # data first: a bad row is reported before the backbone loads
        if name not in data:
            data[name] = load_task(source)
        if data[name].labels is None:
            raise ConfigError(f"--tasks {name}={source}: multitask prompt tuning here is for classification tasks")
    teacher_paths = parse_teachers(config.mpt_teachers, tasks)
    if backbone is None:
        device = "cuda" if config.device == "auto" and torch.cuda.is_available() else (
            "cpu" if config.device == "auto" else config.device)
        backbone = load_backbone(config.model, dtype=resolve_precision(config.precision.value, device), device=device)
    n = config.num_virtual_tokens or DEFAULT_NUM_VIRTUAL_TOKENS
    init = PromptInit.VOCAB if config.init is PromptInit.LABELS else config.init
    generator = torch.Generator().manual_seed(config.seed)
    shared = nn.Parameter(initial_embeddings(init, n, backbone.input_embedding_matrix(), backbone.tokenizer,
                                             text=config.init_text, generator=generator).float().to(backbone.device))
    views = {name: TaskPrompt(shared, config.mpt_rank).to(backbone.device) for name in tasks}
    models = {}
    for name in tasks:
        model = build_prompted_model(config.replace(data=tasks[name], init="vocab", num_virtual_tokens=n,
                                                    init_from=None, method="prompt", tasks=None,
                                                    mpt_teachers=None),
                                     backbone, data[name])
        model.prompt = views[name]
        model.train()
        models[name] = model
    teachers = _load_teachers(teacher_paths, backbone, models)
    trainable = [shared] + [p for view in views.values() for p in (view.u, view.v)]
    count = sum(p.numel() for p in trainable)
    per_task = max(1, config.batch_size // len(tasks))
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * max(
        math.ceil(len(d.train) / per_task) for d in data.values())))
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(config.scheduler.value, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    streams = {name: BatchStream([sum(len(str(r[f])) for f in models[name].input_fields)
                                  for r in data[name].train], per_task, config.seed + i, config.length_bucketing)
               for i, name in enumerate(tasks)}
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    best_score, best_step, best_result = -math.inf, 0, {}
    best_state = [p.detach().clone() for p in trainable]
    train_seconds = 0.0
    bar = tqdm(total=total_steps, desc="multitask", disable=not progress, dynamic_ncols=True)
    for step in range(1, total_steps + 1):
        started = time.perf_counter()
        rows_total = per_task * len(tasks)
        losses, kds = {}, {}
        for name, model in models.items():
            rows = [data[name].train[i] for i in next(streams[name])]
            batch = {k: v.to(backbone.device) for k, v in model.make_batch(rows, data[name].label_field).items()}
            if name in teachers:
                scores = model.class_scores(batch)
                loss = torch.nn.functional.cross_entropy(scores, batch["targets"])
                teacher = teachers[name]
                with torch.no_grad():
                    teacher_batch = {k: v.to(backbone.device)
                                     for k, v in teacher.make_batch(rows, data[name].label_field).items()}
                    teacher_scores = teacher.class_scores(teacher_batch)
                kd = distillation_loss(scores, teacher_scores, config.mpt_distill_temperature)
                kds[name] = kd.item()
                losses[name] = loss.item()
                loss = loss + config.mpt_distill_weight * kd
            else:
                loss, _ = model.loss(batch)
                losses[name] = loss.item()
            (loss * len(rows) / rows_total).backward()
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - started
        record = {"step": step, "split": "train", **{f"loss.{k}": v for k, v in losses.items()},
                  **{f"kd.{k}": v for k, v in kds.items()},
                  "lr": scheduler.get_last_lr()[0]}
        history.append(record)
        bar.update(1)
        if (config.eval_every and step % config.eval_every == 0) or step == total_steps:
            results = {name: evaluate(models[name], data[name].split("validation"),
                                      label_field=data[name].label_field, limit=config.eval_limit)
                       for name in tasks}
            score = sum(primary_metric(r) for r in results.values()) / len(results)
            history.append({"step": step, "split": "validation", "mean": score,
                            **{name: r for name, r in results.items()}})
            if score > best_score:
                best_score, best_step, best_result = score, step, results
                best_state = [p.detach().clone() for p in trainable]
            bar.set_postfix(val=f"{score:.4f}", best=f"{best_score:.4f}")
    bar.close()
    with torch.no_grad():
        for param, value in zip(trainable, best_state):
            param.copy_(value)
    training = {"best_step": best_step, "validation": best_result, "steps": total_steps,
                "train_seconds": round(train_seconds, 3), "trainable_params": count, "lr": config.lr,
                "rows_per_task_per_step": per_task, "seed": config.seed}
    if teachers:
        training["distill"] = {"teachers": {k: str(v) for k, v in teacher_paths.items()},
                               "weight": config.mpt_distill_weight, "temperature": config.mpt_distill_temperature}
    shared_path = _save_shared(out / "shared.safetensors", shared, views, models, tasks, training)
    task_paths = {name: save_prompt(out / f"{name}.safetensors", model, init="multitask",
                                    training={**training, "validation": best_result.get(name), "task": name})
                  for name, model in models.items()}
    atomic_write(out / "metrics.jsonl", lambda tmp: Path(tmp).write_text(
        "".join(json.dumps(r) + "\n" for r in history)))
    return MultitaskResult(shared_path, task_paths, best_step, best_result, total_steps, train_seconds, count,
                           history)
