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
from ..methods import METHODS, MethodName, PromptStart, file_method
from ..prompts import initial_embeddings
from ..protocols import Backbone, Prompted, TaskType
from ..template import Placement, Template, TemplateEncoder, build_template
from ..verbalizer import Verbalizer
from .classifier import linear_head

# (backbone, prompt, template, verbaliser, *, labels, max_length, pooling, head) -> the kind's prompted model
Assemble = Callable[..., Prompted]


def resolved_placement(config: TrainConfig, body: str) -> Placement:
    """--placement, else template when the template has [soft:N] markers, else prefix."""
    return config.placement or (Placement.TEMPLATE if "[soft:" in body else Placement.PREFIX)


def build_text_model(config: TrainConfig, backbone: Backbone, task: TaskData, assemble: Assemble) -> Prompted:
    """Template + verbaliser + initialised prompt around a loaded text backbone, as `config` says."""
    body = config.template or task.default_template
    method = METHODS[config.method]
    source = transfer_source(config, backbone) if config.init_from else None
    if source is not None:
        config = config.replace(num_virtual_tokens=source[0])
    if not method.in_input:  # the prompt lives in every layer's keys/values; the template holds text and fields only
        template = Template.parse(body)
        count = config.num_virtual_tokens or method.default_tokens
    else:
        placement = resolved_placement(config, body)
        count = config.num_virtual_tokens
        if placement is not Placement.TEMPLATE and count is None:
            count = method.default_tokens
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
    if source is not None and METHODS[source[2]].adapt is not None:  # its method turns it into this run's prompt
        prompt = METHODS[source[2]].adapt(config, source[1], backbone.device)
    else:
        if source is not None:
            torch.manual_seed(config.seed)
        tensors = {k: v.to(backbone.device) for k, v in source[1].items()} if source is not None else None
        prompt = method.start(PromptStart(config, backbone, vectors, generator, tensors))
    return assemble(backbone, prompt, template, verbalizer, labels=task.labels, max_length=config.max_length,
                    pooling=config.encoder.pooling, head=None)


def text_model_from_file(backbone: Backbone, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                         assemble: Assemble) -> Prompted:
    """A text kind's prompted model rebuilt from a prompt file's tensors and metadata."""
    verbalizer = Verbalizer.from_spec(meta["labels"], meta["verbalizer"]) if meta.get("verbalizer") else None
    prompt = file_method(meta, "prompt file").from_tensors({k: v.to(backbone.device) for k, v in tensors.items()},
                                                           backbone.hidden_size)
    head = meta.get("head") or {}
    return assemble(backbone, prompt, Template.parse(meta["template"]), verbalizer, labels=meta.get("labels"),
                    max_length=int(meta.get("max_length", 128)), pooling=head.get("pooling", "mean"),
                    head=linear_head(tensors))


def transfer_source(config: TrainConfig, backbone: Backbone) -> tuple[int, dict[str, torch.Tensor], MethodName]:
    """(length, tensors, method) of the --init-from prompt, checked against this backbone, method and length.

    A file of one method starts runs of the methods its entry `continues_as` (a multitask shared prompt, MPT
    stage 1, starts a `--method prompt` run: stage 2)."""
    tensors, meta = read_prompt_tensors(config.init_from)
    check_compatible(meta, backbone, config.init_from)
    method = file_method(meta, config.init_from)
    if config.method not in method.continues_as:
        raise ConfigError(f"--init-from {config.init_from} is a {method.name.value} prompt; this run trains "
                          f"--method {config.method.value}")
    count = int(meta["num_virtual_tokens"])
    if config.num_virtual_tokens not in (None, count):
        raise ConfigError(f"--init-from {config.init_from} has {count} virtual tokens; drop --num-virtual-tokens "
                          f"{config.num_virtual_tokens} or give {count}")
    return count, tensors, method.name
