"""What the text kinds share: a prompted model built from a run's options (template, verbaliser, initialised
prompt; transfer and multitask stage 2 from `--init-from`) or rebuilt from a prompt file. Each text kind
passes its own `assemble` (the prompted-model class that reads its backbone); the rest is the same.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from ..config import TrainConfig
from ..data import TaskData
from ..errors import ConfigError
from ..formats import check_compatible, read_prompt_tensors
from ..prompts import (
    DecomposedPrompt,
    DeepPrompt,
    PromptMethod,
    Reparam,
    ResidualPrompt,
    SoftPrompt,
    dept_rank,
    initial_embeddings,
    prompt_from_tensors,
    target_prompt,
)
from ..protocols import Backbone, PromptedTask, TaskType
from ..template import Placement, Template, TemplateEncoder, build_template
from ..verbalizer import Verbalizer
from .classifier import linear_head

DEFAULT_NUM_VIRTUAL_TOKENS = 20
DEFAULT_DEPT_TOKENS = 10  # DePT's default: half a default prompt, the other half's parameters go to the offset

# (backbone, prompt, template, verbaliser, *, labels, max_length, pooling, head) -> the kind's prompted model
Assemble = Callable[..., PromptedTask]


def resolved_placement(config: TrainConfig, body: str) -> Placement:
    """--placement, else template when the template has [soft:N] markers, else prefix."""
    return config.placement or (Placement.TEMPLATE if "[soft:" in body else Placement.PREFIX)


def build_text_model(config: TrainConfig, backbone: Backbone, task: TaskData, assemble: Assemble) -> PromptedTask:
    """Template + verbaliser + initialised prompt around a loaded text backbone, as `config` says."""
    body = config.template or task.default_template
    deep = config.method is PromptMethod.DEEP
    source = transfer_source(config, backbone) if config.init_from else None
    if source is not None:
        config = config.replace(num_virtual_tokens=source[0])
    if deep:  # the prompt lives in every layer's keys/values; the template holds text and fields only
        template = Template.parse(body)
        count = config.num_virtual_tokens or DEFAULT_NUM_VIRTUAL_TOKENS
    else:
        placement = resolved_placement(config, body)
        count = config.num_virtual_tokens
        if placement is not Placement.TEMPLATE and count is None:
            count = DEFAULT_DEPT_TOKENS if config.method is PromptMethod.DEPT else DEFAULT_NUM_VIRTUAL_TOKENS
        template = build_template(body, placement, count)
        count = template.num_virtual_tokens
    if source is not None and count != source[0]:
        raise ConfigError(f"--template has {count} [soft:N] tokens; --init-from {config.init_from} has {source[0]}")
    missing = [f for f in template.input_fields if f not in task.text_fields]
    if missing:
        raise ConfigError(f"--template uses field(s) {missing} but the data's text fields are "
                          f"{list(task.text_fields)}; set --text-field")
    verbalizer = None
    if config.task is TaskType.CLASSIFICATION:
        verbalizer = Verbalizer.from_spec(task.labels, config.label_words)
        given = {part.partition("=")[0] for item in config.label_words for part in str(item).split()}
        named = [label for label in verbalizer.labels if label in given]
        if config.label_words and len(named) < len(verbalizer.labels):
            missing = [label for label in verbalizer.labels if label not in named]
            raise ConfigError(f"--label-words gives words for {named} but not for {missing}: give every label its "
                              f"words (e.g. {missing[0]}=...), or none to use the label names")
    encoder = TemplateEncoder(template, backbone.tokenizer, config.max_length)
    word_ids = verbalizer.token_ids(encoder.answer_ids) if verbalizer else []
    generator = torch.Generator().manual_seed(config.seed)
    vectors = initial_embeddings(config.init, count, backbone.input_embedding_matrix(),
                                 backbone.tokenizer, text=config.init_text, label_word_ids=word_ids,
                                 generator=generator)
    if source is not None and source[2] is PromptMethod.MULTITASK:  # MPT stage 2: a fresh factor on the shared prompt
        if config.residual.reparam is Reparam.RESIDUAL:
            raise ConfigError(f"--reparam residual does not apply to a multitask shared prompt (--init-from "
                              f"{config.init_from}): drop --reparam")
        prompt = target_prompt(source[1], config.mpt.rank, config.mpt.train_shared, backbone.device)
    elif source is not None:  # prompt transfer: the other task's trained tensors
        tensors = {k: v.to(backbone.device) for k, v in source[1].items()}
        torch.manual_seed(config.seed)
        prompt = (DeepPrompt(tensors["prefix_keys"], tensors["prefix_values"], backbone.hidden_size,
                             reparam_hidden=config.deep.reparam) if deep
                  else _input_prompt(config, prompt_from_tensors(config.method.value, tensors, backbone.hidden_size)))
    elif deep:  # start from the keys/values the backbone computes for the same init tokens
        keys, values = backbone.keys_values(vectors)
        torch.manual_seed(config.seed)  # the reparameterisation MLP's init
        prompt = DeepPrompt(keys, values, backbone.hidden_size, reparam_hidden=config.deep.reparam)
    elif config.method is PromptMethod.DEPT:
        rank = config.dept.rank or dept_rank(count, backbone.hidden_size, config.max_length, DEFAULT_NUM_VIRTUAL_TOKENS)
        if rank < 1:
            raise ConfigError(f"--method dept: a {count}-token prompt leaves no room for a low-rank offset within a "
                              f"{DEFAULT_NUM_VIRTUAL_TOKENS}-token prompt's parameters (hidden size "
                              f"{backbone.hidden_size}, --max-length {config.max_length}); lower --num-virtual-tokens "
                              f"or give --dept-rank")
        prompt = DecomposedPrompt.initial(vectors.to(backbone.device), config.max_length, rank, generator)
    else:
        prompt = _input_prompt(config, SoftPrompt(vectors.to(backbone.device)))
    return assemble(backbone, prompt, template, verbalizer, labels=task.labels, max_length=config.max_length,
                    pooling=config.encoder.pooling, head=None)


def _input_prompt(config: TrainConfig, prompt: SoftPrompt | DecomposedPrompt) -> torch.nn.Module:
    """A plain prompt as it trains: through the residual MLP with --reparam residual, else as it is."""
    if config.residual.reparam is not Reparam.RESIDUAL:
        return prompt
    torch.manual_seed(config.seed)  # the MLP's init
    return ResidualPrompt(prompt.embeddings, config.residual.bottleneck, config.residual.dropout)


def text_model_from_file(backbone: Backbone, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                         assemble: Assemble) -> PromptedTask:
    """A text kind's prompted model rebuilt from a prompt file's tensors and metadata."""
    verbalizer = Verbalizer.from_spec(meta["labels"], meta["verbalizer"]) if meta.get("verbalizer") else None
    prompt = prompt_from_tensors(meta.get("method", "prompt"),
                                 {k: v.to(backbone.device) for k, v in tensors.items()}, backbone.hidden_size)
    head = meta.get("head") or {}
    return assemble(backbone, prompt, Template.parse(meta["template"]), verbalizer, labels=meta.get("labels"),
                    max_length=int(meta.get("max_length", 128)), pooling=head.get("pooling", "mean"),
                    head=linear_head(tensors))


def transfer_source(config: TrainConfig, backbone: Backbone) -> tuple[int, dict[str, torch.Tensor], PromptMethod]:
    """(length, tensors, method) of the --init-from prompt, checked against this backbone, method and length.

    A multitask shared prompt (MPT stage 1) starts a `--method prompt` run: stage 2."""
    tensors, meta = read_prompt_tensors(config.init_from)
    check_compatible(meta, backbone, config.init_from)
    method = PromptMethod(meta.get("method", "prompt"))
    if method is not config.method and not (method is PromptMethod.MULTITASK and config.method is PromptMethod.PROMPT):
        raise ConfigError(f"--init-from {config.init_from} is a {method.value} prompt; this run trains "
                          f"--method {config.method.value}")
    count = int(meta["num_virtual_tokens"])
    if config.num_virtual_tokens not in (None, count):
        raise ConfigError(f"--init-from {config.init_from} has {count} virtual tokens; drop --num-virtual-tokens "
                          f"{config.num_virtual_tokens} or give {count}")
    return count, tensors, method
