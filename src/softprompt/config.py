"""Typed, frozen run configuration. Validated once in `__post_init__`; messages name the flag to change.

`TrainConfig` holds the options every run shares, and one nested group per method and per kind
(`config.deep`, `config.mpt`, `config.encoder`, `config.vpt`, `config.coop`, `config.whisper`), each option
declared once with its help and group. Every option also has a flat name -- the command-line flag
(`--vpt-deep`), a YAML key (`vpt_deep:` or nested `vpt: {deep: ...}`) and a keyword (`TrainConfig(vpt_deep=True)`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import yaml

from .data.fields import field_names
from .declare import option
from .errors import ConfigError
from .kinds.clip.options import CoOpOptions
from .kinds.encoder.options import EncoderOptions
from .kinds.options import KIND_OPTIONS
from .kinds.speech.options import WhisperOptions
from .kinds.vision.options import VPTOptions
from .methods import METHODS, TRAIN_METHODS, MethodName
from .methods.deep import DeepOptions
from .methods.dept import DePTOptions
from .methods.multitask import MultitaskOptions
from .methods.residual import ResidualOptions
from .prompts import PromptInit
from .protocols import TaskType
from .template import Placement


class Precision(str, Enum):
    AUTO = "auto"  # bf16 autocast where the hardware runs bf16 natively, else fp32
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"  # GPUs without bf16 (V100, T4): fp16 weights, fp32 master prompt, dynamic loss scaling


class CompileMode(str, Enum):
    """Whether training compiles the backbone's decoder block (regional torch.compile; evaluation stays eager)."""

    AUTO = "auto"      # compile when it pays back: a causal LM of >= 50M weights, >= 100 steps, one process
    LAYERS = "layers"  # compile one decoder block, reused by every layer
    OFF = "off"        # eager


class OptimizerName(str, Enum):
    ADAMW = "adamw"
    ADAFACTOR = "adafactor"


class ReportTo(str, Enum):
    """Where a run's records go besides metrics.jsonl (accelerate's trackers)."""

    NONE = "none"
    TENSORBOARD = "tensorboard"
    WANDB = "wandb"
    MLFLOW = "mlflow"


class SchedulerName(str, Enum):
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"


# Option groups: the help panels of `softprompt train --help`, the docs' options table, and the sections a YAML
# config may nest options in (`vpt: {deep: true}` is `vpt_deep: true`).
# A method's group is declared in its module and named by its `METHODS` entry; a kind's in its folder's options.py.
GROUPS: dict[str, str] = {
    "data": "Backbone and data", "prompt": "Prompt", "optimisation": "Optimisation", "evaluation": "Evaluation",
    **{m.option_group.name: m.option_group.title for m in METHODS.values() if m.option_group},
    **{group.name: group.title for group in KIND_OPTIONS.values()}, "run": "Run control",
}
# What a run's own config.yaml records beside its options (resolved values): read back, it is ignored.
RUN_SECTION = "resolved"


DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
SEED_MAX = 2**32 - 1  # numpy and torch seeds are unsigned 32-bit
LOAD_IN = ("int8", "8bit", "4bit")  # --load-in: weight-only int8 (kinds/int8.py); bitsandbytes 8-bit / 4-bit (CUDA)


def resolve_device(device: str, flag: str = "--device") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' -> a device this machine has, or a one-line `ConfigError`."""
    if not isinstance(device, str) or not DEVICE.match(device):
        raise ConfigError(f"{flag} {device!r}: use auto, cpu, cuda, cuda:N or mps")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {device}: this machine has no CUDA GPU that torch can use; use --device cpu "
                              f"(or auto)")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                              f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{flag} mps: Apple's Metal backend is not available here; use --device cpu (or auto)")
    return torch.device(device)


_opt = option  # inside TrainConfig's body `option` is its method (config.option(name)), so fields use this


def _group(options: type, group: str) -> Any:
    """A field holding one group of options (its own frozen dataclass)."""
    return field(default_factory=options, metadata={"group": group, "options": options})


def _method_group(name: MethodName) -> Any:
    """The field of a method's own options, as its `METHODS` entry declares them."""
    declared = METHODS[name].option_group
    return _group(declared.options, declared.name)


def _kind_group(name: str) -> Any:
    """The field of a kind's own options, as its folder's options.py declares them."""
    return _group(KIND_OPTIONS[name].options, name)


def _type_names() -> dict[str, tuple[type, ...]]:
    """Option name -> the Python types its value may have before validation (None where optional)."""

    hints = {name: typing.get_type_hints(TrainConfig)[name] for name, (group, _) in FLAT_OPTIONS.items()
             if group is None}
    for group, options in GROUP_FIELDS.items():
        inner_hints = typing.get_type_hints(options)
        hints.update({flag: inner_hints[inner] for inner, flag in _GROUP_FLAGS[group].items()})
    out = {}
    for name, hint in hints.items():
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        allowed: list[type] = []
        for arg in args:
            if arg is type(None):
                allowed.append(type(None))
            elif arg is float:
                allowed += [float, int]
            elif isinstance(arg, type) and issubclass(arg, Enum):
                allowed += [arg, str]
            elif typing.get_origin(arg) is tuple:
                allowed += [tuple, list, str]
            else:
                allowed.append(arg)
        out[name] = tuple(allowed)
    return out


_TYPES: dict[str, tuple[type, ...]] = {}
_TYPE_WORDS = {int: "a whole number", float: "a number", str: "text", bool: "true or false", tuple: "a list",
               list: "a list", type(None): "null"}


def _check_type(name: str, value: Any) -> None:
    """Refuse a value of the wrong type (a YAML `lr: fast`, `batch_size: 2.5`) with the flag to change."""
    if not _TYPES:
        _TYPES.update(_type_names())
    allowed = _TYPES[name]
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if isinstance(value, float) and float in allowed and not math.isfinite(value):
        raise ConfigError(f"--{name.replace('_', '-')} {value!r}: give a finite number")
    if not ok:
        words = " or ".join(dict.fromkeys(_TYPE_WORDS.get(t, "one of the listed choices") for t in allowed
                                          if not (t is int and float in allowed)))
        raise ConfigError(f"--{name.replace('_', '-')} {value!r}: expected {words}")


@dataclass(frozen=True, init=False)
class TrainConfig:
    """Everything one training run needs. Build it from keyword arguments, a YAML file, or the CLI."""

    model: str = _opt("smollm2-135m", "Backbone: a built-in name, a local Hugging Face folder, or a hub id.", "data")
    data: str | None = _opt(None, "Built-in dataset name (rotten_tomatoes, bbc_news), a folder of "
                                  "train/validation/test .jsonl/.csv/.tsv/.parquet files, a saved Hugging Face "
                                  "dataset folder, or hf:NAME[:CONFIG] (local cache only).", "data")
    train_file: str | None = _opt(None, "Training file (.jsonl, .csv, .tsv or .parquet); overrides the folder's.",
                                  "data")
    validation_file: str | None = _opt(None, "Validation file; without one, 10% of train is held out.", "data")
    test_file: str | None = _opt(None, "Test file.", "data")
    task: TaskType = _opt(TaskType.CLASSIFICATION, "classification (label words) or generation (input -> target).",
                          "data")
    text_field: str = _opt("text", "Input field name(s), comma-separated.", "data")
    label_field: str | None = _opt(None, "Label (classification) or target (generation) field; default label/target.",
                                   "data")
    labels: tuple[str, ...] | None = _opt(None, "The label set (default: the labels found in the training file).",
                                          "data")
    skip_bad_rows: bool = _opt(False, "Skip bad data rows (and report how many) instead of stopping at the first.",
                               "data")
    output: str = _opt("runs/prompt", "Run directory: prompt.safetensors, metrics.jsonl, training.png, config.yaml.",
                       "run")
    method: MethodName = _opt(MethodName.PROMPT, "; ".join(f"{m.value}: {METHODS[m].summary}" for m in TRAIN_METHODS)
                              + " (the weight-training baselines are for `softprompt compare`).", "prompt",
                              cli_text=True)
    train_per_class: int | None = _opt(None, "Few-shot: train on this many seeded examples per class.", "data")
    num_virtual_tokens: int | None = _opt(None, "Soft prompt length; default 20, 10 for --method dept (with "
                                                "[soft:N] markers: their total).", "prompt")
    placement: Placement | None = _opt(None, "Where soft tokens go: prefix, suffix, or template ([soft:N] markers); "
                                             "default: template if --template has markers, else prefix.", "prompt")
    template: str | None = _opt(None, "Template with {text}-style fields, optional [soft:N] runs, and {label} or "
                                      "{target} last; default: the dataset's.", "prompt")
    label_words: tuple[str, ...] = _opt((), "Label words for every label, e.g. positive=great,good negative=bad "
                                            "(default: the label names).", "prompt")
    init: PromptInit = _opt(PromptInit.LABELS, "Prompt init: random (uniform, the real embeddings' "
                                               "variance), vocab (frequent real tokens), text "
                                               "(--init-text) or labels (label-word embeddings, the rest "
                                               "from vocab).", "prompt")
    init_text: str | None = _opt(None, "Text whose token embeddings initialise the prompt (--init text).", "prompt")
    init_from: str | None = _opt(None, "Start from another task's prompt file (prompt transfer, SPoT): same backbone "
                                       "and method, its length; --init is then unused.", "prompt")
    optimizer: OptimizerName = _opt(OptimizerName.ADAMW, "adamw or adafactor.", "optimisation")
    lr: float = _opt(3e-2, "Peak learning rate of the prompt.", "optimisation")
    head_lr: float | None = _opt(None, "Peak learning rate of any trained classification head (encoders without a "
                                       "vocabulary head, ViT and Whisper heads, linear probes); default --lr.",
                                 "optimisation")
    weight_decay: float = _opt(0.0, "Weight decay on the prompt.", "optimisation")
    warmup_ratio: float = _opt(0.06, "Fraction of steps with a linear warmup.", "optimisation")
    scheduler: SchedulerName = _opt(SchedulerName.COSINE, "Learning-rate schedule after warmup.", "optimisation")
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 = off).", "optimisation")
    max_rollbacks: int = _opt(3, "Non-finite loss or exploding gradients (over 1000x the recent "
                                 "median): drop the step, roll back to the last good state and halve the learning "
                                 "rate, at most this many times, then stop with one clear line.", "optimisation")
    checkpoint_every: int = _opt(50, "Write the whole run state (prompt, optimiser, scheduler, RNG, data position) to "
                                     "OUTPUT/checkpoint.pt every K steps, atomically; `train --resume OUTPUT` "
                                     "continues from it (0 = off).", "run")
    batch_size: int = _opt(16, "Examples per optimiser step (before accumulation).", "optimisation")
    grad_accum: int = _opt(1, "Gradient accumulation steps per optimiser step.", "optimisation")
    pass_tokens: int = _opt(4096, "Run a batch whose padded tokens exceed this as several forward/backward passes of "
                                  "fewer rows (gradients add up to the same step; causal LMs): long inputs keep "
                                  "activations bounded and step faster. 0 = one pass.",
                            "optimisation")
    length_bucketing: bool = _opt(True, "Batch rows of similar length together (less padding; order still seeded).",
                                  "optimisation")
    epochs: float = _opt(1.0, "Passes over the training data (ignored when --max-steps is set).", "optimisation")
    max_steps: int | None = _opt(None, "Optimiser steps; overrides --epochs.", "optimisation")
    max_length: int = _opt(128, "Maximum tokens per example (input is truncated, never the prompt or answer).",
                           "optimisation")
    log_every: int = _opt(0, "Log the mean training loss (and the model's other figures) every K steps (0 = auto: "
                             "every 10 steps, or 10 times in a run of fewer than 100 steps).", "evaluation")
    report_to: ReportTo = _opt(ReportTo.NONE, "Also send the run's records to tensorboard (OUTPUT/tensorboard), "
                                              "wandb or mlflow, through accelerate's trackers; none = metrics.jsonl "
                                              "only.", "evaluation")
    eval_every: int = _opt(100, "Evaluate on validation every K steps (0 = only at the end).", "evaluation")
    eval_limit: int = _opt(500, "Validation examples per evaluation (0 = all).", "evaluation")
    patience: int = _opt(0, "Stop after this many evaluations without improvement (0 = never).", "evaluation")
    seed: int = _opt(0, "Random seed (prompt init, data order).", "optimisation")
    compile: CompileMode = _opt(CompileMode.AUTO, "Compile one decoder block of the backbone for training steps and "
                                                  "reuse it for every layer (faster steps; the first compile takes "
                                                  "tens of seconds on a CPU, seconds from inductor's disk cache): "
                                                  "layers, off, or auto (layers for a causal LM of 50M+ weights trained "
                                                  "100+ steps in one process, else off).", "run")
    precision: Precision = _opt(Precision.AUTO, "auto, fp32, bf16 or fp16 (half-precision backbone, fp32 master "
                                                "prompt; fp16 adds dynamic loss scaling).", "run")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N.", "run")
    gradient_checkpointing: bool = _opt(False, "Keep only each decoder layer's input during the forward pass and "
                                               "recompute the rest in the backward pass (less activation memory, "
                                               "~1.3x compute); the gradient still reaches the prompt.", "run")
    load_in: str | None = _opt(None, "Quantise the frozen backbone at load: int8 (weight-only; CPU or GPU), 8bit "
                                     "or 4bit (bitsandbytes, CUDA). The prompt stays fp32.", "run")

    # Each method's and kind's own options, one group each (`config.vpt.deep`; flags and YAML keep `vpt_deep`),
    # declared in the method's module (methods/deep.py...) or the kind's folder (kinds/vision/options.py...).
    residual: ResidualOptions = _method_group(MethodName.RESIDUAL)
    deep: DeepOptions = _method_group(MethodName.DEEP)
    dept: DePTOptions = _method_group(MethodName.DEPT)
    mpt: MultitaskOptions = _method_group(MethodName.MULTITASK)
    encoder: EncoderOptions = _kind_group("encoder")
    vpt: VPTOptions = _kind_group("vpt")
    coop: CoOpOptions = _kind_group("coop")
    whisper: WhisperOptions = _kind_group("whisper")

    def __init__(self, **values: Any) -> None:
        """Options by flat name (`lr=0.1`, `vpt_deep=True`, as on the command line), or a group as a whole
        (`vpt=VPTOptions(deep=True)` or `vpt={"deep": True}`); a flat name wins over its group's object."""
        own, groups = {}, {name: {} for name in GROUP_FIELDS}
        values = _legacy_reparam(dict(values))
        for key, value in sorted(values.items(), key=lambda item: item[0] not in GROUP_FIELDS):  # groups first
            if key in GROUP_FIELDS:
                groups[key].update(_group_values(key, value))
            elif key in FLAT_OPTIONS and FLAT_OPTIONS[key][0] is not None:
                group, inner = FLAT_OPTIONS[key]
                groups[group][inner] = value
            elif key in FLAT_OPTIONS:
                own[key] = value
            else:
                raise ConfigError(f"unknown option '{key}'")
        for f in dataclasses.fields(self):
            if f.name in GROUP_FIELDS:
                object.__setattr__(self, f.name, GROUP_FIELDS[f.name](**groups[f.name]))
            else:
                object.__setattr__(self, f.name, own.get(f.name, f.default))
        self.__post_init__()

    def option(self, name: str) -> Any:
        """An option's value by its flat name (`config.option("vpt_deep")` is `config.vpt.deep`)."""
        group, inner = FLAT_OPTIONS[name]
        return getattr(getattr(self, group), inner) if group is not None else getattr(self, name)

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool):  # `compile: true|false` in a config file
            object.__setattr__(self, "compile", CompileMode.LAYERS if self.compile else CompileMode.OFF)
        for name in FLAT_OPTIONS:
            _check_type(name, self.option(name))
        object.__setattr__(self, "method", _train_method(self.method))
        for name, enum in (("task", TaskType), ("placement", Placement), ("init", PromptInit),
                           ("optimizer", OptimizerName), ("scheduler", SchedulerName), ("precision", Precision),
                           ("report_to", ReportTo), ("compile", CompileMode)):
            value = getattr(self, name)
            if value is None and name == "placement":
                continue
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                raise ConfigError(f"--{name.replace('_', '-')} {value!r}: choose one of "
                                  f"{', '.join(e.value for e in enum)}") from None
        for name in ("labels", "label_words"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, tuple(v for v in value.replace(",", " ").split() if v)
                                   if name == "labels" else tuple(value.split()))
            elif value is not None:
                object.__setattr__(self, name, tuple(value))
        for method in METHODS.values():
            for name in sorted(method.options - METHODS[self.method].options):
                if self.option(name) != option_field(name).default:
                    flag = "--" + name.replace("_", "-")
                    raise ConfigError(f"{flag} applies to --method {method.name.value} ({method.summary}); this run "
                                      f"trains --method {self.method.value}: drop {flag} or give --method "
                                      f"{method.name.value}")
        checks = [
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.head_lr is None or self.head_lr > 0, f"--head-lr must be > 0, got {self.head_lr}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"--grad-accum must be >= 1, got {self.grad_accum}"),
            (0 <= self.seed <= SEED_MAX, f"--seed must be in 0..{SEED_MAX:,} (2**32 - 1), got {self.seed}"),
            (self.epochs > 0, f"--epochs must be > 0, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}"),
            (self.max_length >= 8, f"--max-length must be >= 8, got {self.max_length}"),
            (self.log_every >= 0, f"--log-every must be >= 0 (0 = auto), got {self.log_every}"),
            (self.eval_every >= 0, f"--eval-every must be >= 0 (0 = off), got {self.eval_every}"),
            (self.eval_limit >= 0, f"--eval-limit must be >= 0 (0 = all), got {self.eval_limit}"),
            (self.patience >= 0, f"--patience must be >= 0, got {self.patience}"),
            (0 <= self.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.max_grad_norm >= 0, f"--max-grad-norm must be >= 0, got {self.max_grad_norm}"),
            (self.max_rollbacks >= 0, f"--max-rollbacks must be >= 0, got {self.max_rollbacks}"),
            (bool(DEVICE.match(self.device)), f"--device {self.device!r}: use auto, cpu, cuda, cuda:N or mps"),
            (self.load_in in (None, *LOAD_IN), f"--load-in {self.load_in!r}: choose {', '.join(LOAD_IN)}"),
            (not (self.gradient_checkpointing and self.method is MethodName.DEEP),
             "--gradient-checkpointing is for --method prompt (a deep prompt's per-layer cache is not recomputable)"),
            (not (self.gradient_checkpointing and self.method is MethodName.DEPT),
             "--gradient-checkpointing is for --method prompt (DePT's offsets are indexed by whole rows, which "
             "its recomputed word rows are not)"),
            (self.residual.bottleneck >= 1, f"--residual-bottleneck must be >= 1, got {self.residual.bottleneck}"),
            (0 <= self.residual.dropout < 1, f"--residual-dropout must be in [0, 1), got {self.residual.dropout}"),
            (self.dept.rank is None or self.dept.rank >= 1, f"--dept-rank must be >= 1, got {self.dept.rank}"),
            (self.dept.lr > 0, f"--dept-lr must be > 0, got {self.dept.lr}"),
            (self.encoder.pooling in ("mean", "cls"), f"--pooling {self.encoder.pooling!r}: choose mean or cls"),
            (self.whisper.encoder_prompt_tokens >= 0,
             f"--encoder-prompt-tokens must be >= 0, got {self.whisper.encoder_prompt_tokens}"),
            (self.coop.class_token_position in ("end", "middle", "front"),
             f"--coop-class-token-position {self.coop.class_token_position!r}: choose end, middle or front"),
            (self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0 (0 = off), got {self.checkpoint_every}"),
            (self.deep.reparam >= 0, f"--deep-reparam must be >= 0 (0 = off), got {self.deep.reparam}"),
            (not (self.method is MethodName.DEEP and self.placement is not None),
             "--placement does not apply to --method deep (its prompt is in every layer, not in the text)"),
            (not (self.method is MethodName.DEEP and self.template and "[soft:" in self.template),
             "--method deep takes a --template without [soft:N] markers"),
            (self.num_virtual_tokens is None or self.num_virtual_tokens >= 1,
             f"--num-virtual-tokens must be >= 1, got {self.num_virtual_tokens}"),
            (self.data is not None or self.train_file is not None or METHODS[self.method].many_tasks,
             "give --data NAME_OR_FOLDER or --train-file"),
            (not (METHODS[self.method].many_tasks and not self.mpt.tasks),
             "--method multitask needs --tasks name=data,name=data"),
            (self.mpt.rank >= 1, f"--mpt-rank must be >= 1, got {self.mpt.rank}"),
            (self.mpt.distill_weight > 0, f"--mpt-distill-weight must be > 0, got {self.mpt.distill_weight}"),
            (self.mpt.distill_temperature > 0,
             f"--mpt-distill-temperature must be > 0, got {self.mpt.distill_temperature}"),
            (self.train_per_class is None or self.train_per_class >= 1,
             f"--train-per-class must be >= 1, got {self.train_per_class}"),
            (not (self.train_per_class and self.task is TaskType.GENERATION),
             "--train-per-class is for classification"),
            (not (self.task is TaskType.GENERATION and self.init is PromptInit.LABELS),
             "--init labels needs --task classification; use --init vocab or --init text for generation"),
            (not (self.init is PromptInit.TEXT and not self.init_text), "--init text needs --init-text 'some words'"),
            (not (self.task is TaskType.GENERATION and self.label_words), "--label-words is for classification"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        field_names(self.text_field)

    @property
    def init_name(self) -> str:
        """How the prompt starts, for its metadata: the init strategy, or the file it was transferred from."""
        return f"from:{Path(self.init_from).name}" if self.init_from else self.init.value

    @property
    def text_fields(self) -> tuple[str, ...]:
        return field_names(self.text_field)

    def to_dict(self) -> dict[str, Any]:
        """Shared options flat, each kind's / method's options nested under its group (`vpt: {deep: false}`):
        the form of config.yaml and of a checkpoint's config; `TrainConfig(**d)` reads it back."""
        def plain(value: Any) -> Any:
            return value.value if isinstance(value, Enum) else list(value) if isinstance(value, tuple) else value

        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = ({g.name: plain(getattr(value, g.name)) for g in dataclasses.fields(value)}
                           if f.name in GROUP_FIELDS else plain(value))
        return out

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some options changed (flat names or groups, as the constructor takes them)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def help(cls, name: str) -> str:
        return option_field(name).metadata["help"]

    @classmethod
    def from_sources(cls, config_file: str | Path | None = None, **overrides: Any) -> "TrainConfig":
        """Defaults <- YAML file <- explicit overrides (None means 'not given')."""
        values: dict[str, Any] = {}
        if config_file is not None:
            path = Path(config_file)
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except OSError as exc:
                raise ConfigError(f"--config {path}: cannot read ({exc.strerror})") from None
            except UnicodeDecodeError as exc:
                raise ConfigError(f"--config {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
            except yaml.YAMLError as exc:
                raise ConfigError(f"--config {path}: invalid YAML ({str(exc).splitlines()[0]})") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"--config {path}: expected a mapping of option: value")
            for key, value in _legacy_reparam(_flatten(loaded, path)).items():
                if key not in FLAT_OPTIONS:
                    raise ConfigError(f"--config {path}: unknown option '{key}'")
                values[key] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _train_method(value: Any) -> MethodName:
    """--method as a `MethodName` that `train` can run (the baselines are `softprompt compare`'s)."""
    choices = ", ".join(m.value for m in TRAIN_METHODS)
    try:
        method = MethodName(value)
    except ValueError:
        raise ConfigError(f"--method {value!r}: choose one of {choices}") from None
    if method not in TRAIN_METHODS:
        raise ConfigError(f"--method {method.value} is a baseline, not a prompt: train takes {choices}; measure it "
                          f"with `softprompt compare --methods prompt,{method.value}`")
    return method


def _legacy_reparam(values: dict[str, Any]) -> dict[str, Any]:
    """`reparam: none|residual` (configs written before --method residual): none is the default, residual is
    --method residual."""
    reparam = values.pop("reparam", None)
    residual = values.get("residual")
    if isinstance(residual, dict) and "reparam" in residual:
        residual = dict(residual)
        reparam = residual.pop("reparam")
        values["residual"] = residual
    if reparam is None or str(getattr(reparam, "value", reparam)) == "none":
        return values
    if str(getattr(reparam, "value", reparam)) != "residual":
        raise ConfigError(f"--reparam {reparam!r}: residual prompt tuning is --method residual")
    if str(getattr(values.get("method"), "value", values.get("method", "prompt"))) not in ("prompt", "residual"):
        raise ConfigError(f"reparam: residual is for plain prompts (--method residual), not --method "
                          f"{getattr(values['method'], 'value', values['method'])}")
    values["method"] = MethodName.RESIDUAL
    return values


def _flatten(loaded: dict, path: Path) -> dict[str, Any]:
    """A YAML mapping of options -> {option name: value}: nested sections (`vpt: {deep: true}`) become their
    prefixed names; a run's `resolved` section (what it worked out, for reading) is skipped."""
    out: dict[str, Any] = {}
    for key, value in loaded.items():
        key = str(key).replace("-", "_")
        if key == RUN_SECTION:
            continue
        if key in GROUP_FIELDS and isinstance(value, dict):
            for inner, inner_value in value.items():
                name = str(inner).replace("-", "_")
                flat = _GROUP_FLAGS[key].get(name, name)  # `vpt: {deep: ...}` or `vpt: {vpt_deep: ...}`
                out[flat] = inner_value
            continue
        out[key] = value
    return out


# Group field -> its options class; flat option name -> (group field or None, name inside the group).
GROUP_FIELDS: dict[str, type] = {f.name: f.metadata["options"] for f in dataclasses.fields(TrainConfig)
                                  if "options" in f.metadata}
FLAT_OPTIONS: dict[str, tuple[str | None, str]] = {
    **{f.name: (None, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in GROUP_FIELDS},
    **{inner.metadata["flag"]: (group, inner.name) for group, options in GROUP_FIELDS.items()
       for inner in dataclasses.fields(options)}}
_GROUP_FLAGS: dict[str, dict[str, str]] = {group: {inner.name: inner.metadata["flag"]
                                                   for inner in dataclasses.fields(options)}
                                           for group, options in GROUP_FIELDS.items()}


def option_field(name: str) -> dataclasses.Field:
    """The declaration (default, help, group) of an option by its flat name."""
    group, inner = FLAT_OPTIONS[name]
    owner = GROUP_FIELDS[group] if group is not None else TrainConfig
    return next(f for f in dataclasses.fields(owner) if f.name == inner)


def option_names() -> list[str]:
    """Every option's flat name, in declaration order."""
    return list(FLAT_OPTIONS)


def _group_values(group: str, value: Any) -> dict[str, Any]:
    options = GROUP_FIELDS[group]
    if isinstance(value, options):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        names = {f.name for f in dataclasses.fields(options)}
        flags = {flag: name for name, flag in _GROUP_FLAGS[group].items()}
        out = {}
        for key, inner in value.items():
            key = str(key).replace("-", "_")
            if key not in names and key not in flags:
                raise ConfigError(f"unknown option '{group}.{key}' (the {group} group has {sorted(names)})")
            out[flags.get(key, key)] = inner
        return out
    raise ConfigError(f"option group '{group}' takes a mapping of its options, got {value!r}")


def option_hint(name: str) -> Any:
    """An option's type, by its flat name."""
    group, inner = FLAT_OPTIONS[name]
    return typing.get_type_hints(GROUP_FIELDS[group] if group is not None else TrainConfig)[inner]


def _check_declarations() -> None:
    """Every option's group has a title in GROUPS, and a group's field is named as its group (`config.deep`)."""
    for name in FLAT_OPTIONS:
        if option_field(name).metadata["group"] not in GROUPS:
            raise ValueError(f"option {name}: group {option_field(name).metadata['group']!r} has no title in GROUPS")
    for f in dataclasses.fields(TrainConfig):
        if "options" in f.metadata and f.name != f.metadata["group"]:
            raise ValueError(f"TrainConfig.{f.name} holds group {f.metadata['group']!r}: name the field as its group")


_check_declarations()
