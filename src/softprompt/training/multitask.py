"""Multitask prompt tuning (MPT): one shared prompt for many tasks, a small rank-r factor per task.

Task k's prompt is P_k = P ∘ (U_k V_kᵀ): the shared prompt P [n, d] multiplied element-wise by a low-rank
matrix (U_k [n, r], V_k [d, r]; r = 1 by default, starting as all ones so that P_k = P).

- Stage 1 (`softprompt train --method multitask --tasks rt=rotten_tomatoes,bbc=bbc_news`, `train_multitask`):
  P and every source task's factor train together through the one training loop (`multitask_job` makes the
  `Job` it runs: so stage 1 has the divergence guard, `--resume`, gradient accumulation and data parallelism);
  each step mixes rows of every task (each task keeps its own template and verbaliser) and the loss is the
  row-weighted mean over the tasks. Writes `shared.safetensors`
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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..config import TrainConfig
from ..data import TaskData, load_task
from ..errors import ConfigError
from ..evaluation import evaluate, primary_metric
from ..formats import FORMAT_NAME, atomic_write, prompt_metadata, save_prompt
from ..kinds.table import build_prompted_model, kind_of, load_prompted_model
from ..methods import DEFAULT_NUM_VIRTUAL_TOKENS
from ..methods.multitask import TaskPrompt
from ..prompts import PromptInit, initial_embeddings
from ..protocols import Backbone, Capability, Prompted, TaskType
from .checkpoint import BatchStream
from .state import Job

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


TASK_FIELD = "__task__"  # the source task of a row in the mixed training rows


class MultitaskModel(nn.Module):
    """Every source task's prompted model over one shared prompt: a batch of mixed rows in, the row-weighted
    mean loss out (plus, for a task with a teacher, the distillation term)."""

    task = TaskType.CLASSIFICATION

    def __init__(self, models: dict[str, Prompted], shared: nn.Parameter, label_fields: dict[str, str],
                 teachers: dict[str, Prompted], distill_weight: float, temperature: float) -> None:
        super().__init__()
        self.shared = shared
        self.tasks = nn.ModuleDict(models)
        self.label_fields = label_fields
        self.teachers = teachers  # a plain dict: the teachers' prompts are not this model's parameters
        self.distill_weight, self.temperature = distill_weight, temperature

    def make_batch(self, rows: list[dict], label_field: str | None = None) -> dict[str, dict]:
        """One batch per task present in `rows` (each through its task's own template and label field)."""
        by_task: dict[str, list[dict]] = {}
        for row in rows:
            by_task.setdefault(row[TASK_FIELD], []).append(row)
        batch = {}
        for name, task_rows in by_task.items():
            field = self.label_fields[name]
            batch[name] = {"student": self.tasks[name].make_batch(task_rows, field)}
            if name in self.teachers:
                batch[name]["teacher"] = self.teachers[name].make_batch(task_rows, field)
        return batch

    def loss(self, batch: dict[str, dict]) -> tuple[torch.Tensor, dict[str, float]]:
        rows = {name: int(parts["student"]["targets"].shape[0]) for name, parts in batch.items()}
        total_rows = sum(rows.values())
        total, correct, figures = 0.0, 0.0, {}
        for name, parts in batch.items():
            scores = self.tasks[name].class_scores(parts["student"])
            loss = torch.nn.functional.cross_entropy(scores.float(), parts["student"]["targets"])
            figures[f"loss.{name}"] = loss.item()
            if "teacher" in parts:
                with torch.no_grad():
                    teacher_scores = self.teachers[name].class_scores(parts["teacher"])
                kd = distillation_loss(scores, teacher_scores, self.temperature)
                figures[f"kd.{name}"] = kd.item()
                loss = loss + self.distill_weight * kd
            total = total + loss * rows[name] / total_rows
            correct += (scores.argmax(-1) == parts["student"]["targets"]).float().sum().item()
        return total, {"accuracy": correct / total_rows, **figures}


class TaskMixStream:
    """Each step's rows: a batch from every task's own seeded stream, as indices into the mixed rows."""

    def __init__(self, streams: dict[str, BatchStream], offsets: dict[str, int]) -> None:
        self.streams, self.offsets = streams, offsets

    def __iter__(self) -> "TaskMixStream":
        return self

    def __next__(self) -> list[int]:
        return [self.offsets[name] + i for name, stream in self.streams.items() for i in next(stream)]

    def state_dict(self) -> dict[str, Any]:
        return {name: stream.state_dict() for name, stream in self.streams.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if sorted(state) != sorted(self.streams):
            raise ConfigError(f"the checkpoint was taken with tasks {sorted(state)}, this run has "
                              f"{sorted(self.streams)}: resume with the same --tasks")
        for name, stream in self.streams.items():
            stream.load_state_dict(state[name])


def load_tasks(config: TrainConfig) -> dict[str, TaskData]:
    """Every source task's data (before the backbone loads: a bad row is reported first)."""
    tasks = parse_tasks(config.mpt.tasks)
    data = {}
    for name, source in tasks.items():
        data[name] = load_task(source)
        if data[name].labels is None:
            raise ConfigError(f"--tasks {name}={source}: multitask prompt tuning here is for classification tasks")
    return data


def multitask_job(config: TrainConfig, backbone: Backbone, data: dict[str, TaskData], world: int) -> Job:
    """The loop's `Job` for stage 1: the shared prompt, a factor per task, mixed-task batches, the files."""
    kind_of(backbone).require(Capability.MULTITASK, f"--model {backbone.name}")
    tasks = parse_tasks(config.mpt.tasks)
    teacher_paths = parse_teachers(config.mpt.teachers, tasks)
    n = config.num_virtual_tokens or DEFAULT_NUM_VIRTUAL_TOKENS
    init = PromptInit.VOCAB if config.init is PromptInit.LABELS else config.init
    generator = torch.Generator().manual_seed(config.seed)
    shared = nn.Parameter(initial_embeddings(init, n, backbone.input_embedding_matrix(), backbone.tokenizer,
                                             text=config.init_text, generator=generator).float().to(backbone.device))
    views = {name: TaskPrompt(shared, config.mpt.rank).to(backbone.device) for name in tasks}
    models = {}
    for name in tasks:
        model = build_prompted_model(config.replace(data=tasks[name], init="vocab", num_virtual_tokens=n,
                                                    init_from=None, method="prompt", tasks=None,
                                                    mpt_teachers=None),
                                     backbone, data[name])
        model.prompt = views[name]
        models[name] = model
    teachers = _load_teachers(teacher_paths, backbone, models)
    multitask = MultitaskModel(models, shared, {name: d.label_field for name, d in data.items()}, teachers,
                               config.mpt.distill_weight, config.mpt.distill_temperature)
    per_task = max(1, config.batch_size // len(tasks))
    rows, offsets, streams = [], {}, {}
    for i, name in enumerate(tasks):
        offsets[name] = len(rows)
        rows += [{**row, TASK_FIELD: name} for row in data[name].train]
        lengths = [sum(len(str(r[f])) for f in models[name].input_fields) for r in data[name].train]
        streams[name] = BatchStream(lengths, per_task * world, config.seed + i, config.length_bucketing)

    def validate() -> dict:
        results = {name: evaluate(models[name], data[name].split("validation"), label_field=data[name].label_field,
                                  limit=config.eval_limit) for name in tasks}
        mean = sum(primary_metric(r) for r in results.values()) / len(results)
        return {"accuracy": mean, "tasks": results}

    extra_training: dict[str, Any] = {"rows_per_task_per_step": per_task}
    if teachers:
        extra_training["distill"] = {"teachers": {k: str(v) for k, v in teacher_paths.items()},
                                     "weight": config.mpt.distill_weight,
                                     "temperature": config.mpt.distill_temperature}

    def save(folder: Path, model: MultitaskModel, extra: dict) -> Path:
        training = {**extra.get("training", {}), **extra_training}
        per_task_results = training.get("validation", {}).get("tasks", {})
        for name, task_model in models.items():
            save_prompt(folder / f"{name}.safetensors", task_model, init="multitask",
                        training={**training, "validation": per_task_results.get(name), "task": name})
        return _save_shared(folder / "shared.safetensors", shared, views, models, tasks,
                            {**training, "validation": per_task_results})

    return Job(name="+".join(tasks), model=multitask, train_rows=rows, label_field="label",
               stream=TaskMixStream(streams, offsets), validate=validate, save=save,
               resolved={"template": None, "placement": "prefix", "num_virtual_tokens": n, "labels": None,
                         "tasks": {name: m.template_source for name, m in models.items()}},
               metadata={"init": "multitask"})


def _save_shared(path: Path, shared: torch.Tensor, views: dict[str, TaskPrompt], models: dict, tasks: dict[str, str],
                 training: dict) -> Path:
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
