"""Which path runs a request: the kind table decides.

Prompts of a kind that can share a backbone pass with other prompts (`Capability.MIXED_BATCH`: causal LMs) run
together through `inference.batch`. Every other servable text kind (masked LM, encoder with a head,
encoder-decoder) runs each prompt's rows as one batch of its own, through the same `make_batch` /
`class_scores` that `evaluate` and `softprompt predict` use, so its scores equal theirs. Results come back in
request order whatever path each row took.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError
from ..kinds.table import kind_of
from ..protocols import Backbone, Capability, TaskType
from .batch import Classification, Decoder, Generation, Request, fields_of, start_batch


def length_groups(lengths: Sequence[int], pad_ratio: float = 1.5, max_rows: int | None = None) -> list[list[int]]:
    """Indices of rows, sorted by length and split where one more row would make padded tokens exceed
    `pad_ratio` times the real ones (or the group would pass `max_rows`): a long news article and a short review
    cost less apart than padded together."""
    groups: list[list[int]] = []
    group: list[int] = []
    real = 0
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        tokens = lengths[index]
        if group and ((len(group) + 1) * tokens > pad_ratio * (real + tokens)
                      or (max_rows is not None and len(group) >= max_rows)):
            groups.append(group)
            group, real = [], 0
        group.append(index)
        real += tokens
    return groups + ([group] if group else [])


def run_in_groups(backbone: Backbone, requests: Sequence[Request], *, max_rows: int = 32,
                  pad_ratio: float = 1.5) -> list[Classification | Generation]:
    """`run_requests` over many rows: rows of similar length run together, at most `max_rows` a batch; results
    in request order."""
    lengths = [req.model.row_columns(fields_of(req.model, req.inputs)) for req in requests]
    results: list[Classification | Generation | None] = [None] * len(requests)
    for group in length_groups(lengths, pad_ratio, max_rows):
        for index, result in zip(group, run_requests(backbone, [requests[i] for i in group])):
            results[index] = result
    return results  # type: ignore[return-value]


@torch.no_grad()
def run_requests(backbone: Backbone, requests: Sequence[Request]) -> list[Classification | Generation]:
    """Run requests of any servable prompts on `backbone`; results in request order."""
    results, decoder = start_requests(backbone, requests)
    where = {id(req): i for i, req in enumerate(requests)}
    while decoder.active:
        for state in decoder.step():
            results[where[id(state.request)]] = state.result()
    return results  # type: ignore[return-value]


@torch.no_grad()
def start_requests(backbone: Backbone, requests: Sequence[Request], decoder: Decoder | None = None
                   ) -> tuple[list[Classification | Generation | None], Decoder]:
    """`run_requests` up to the decoding: results of the rows that are done, None for generation rows of
    mixed-batch kinds, which join `decoder` (see `inference.batch.start_batch`); rows of other kinds run whole."""
    mixed = [i for i, req in enumerate(requests) if kind_of(req.model).can(Capability.MIXED_BATCH)]
    started, decoder = start_batch(backbone, [requests[i] for i in mixed], decoder)
    if len(mixed) == len(requests):
        return started, decoder
    results: list[Classification | Generation | None] = [None] * len(requests)
    for i, result in zip(mixed, started):
        results[i] = result
    groups: dict[tuple[int, str], list[int]] = {}
    mixed_rows = set(mixed)
    for i, req in enumerate(requests):
        if i not in mixed_rows:
            groups.setdefault((id(req.model), req.task), []).append(i)
    for indices in groups.values():
        for i, result in zip(indices, _run_one_prompt(backbone, [requests[i] for i in indices])):
            results[i] = result
    return results, decoder


def _run_one_prompt(backbone: Backbone, requests: Sequence[Request]) -> list[Classification | Generation]:
    """Rows of one prompt and one task, as one batch of that prompt alone."""
    model = requests[0].model
    if model.backbone is not backbone:
        raise ConfigError("every request's prompt must be bound to the batch's backbone")
    kind = kind_of(model)  # the bank admitted only servable kinds (PromptBank.add)
    rows = [dict(fields_of(model, req.inputs)) for req in requests]
    if requests[0].task == "classify":
        if model.task is not TaskType.CLASSIFICATION:
            raise ConfigError("a generation prompt cannot classify; send it a completion request")
        batch = {k: v.to(backbone.device) for k, v in model.make_batch(rows, label_field=None).items()}
        scores = model.class_scores(batch).float().cpu()
        labels = model.labels
        return [Classification(labels[int(s.argmax())], {label: float(v) for label, v in zip(labels, s)})
                for s in scores]
    kind.require(Capability.GENERATE, f"backbone '{backbone.name}'")
    if model.task is not TaskType.GENERATION:
        raise ConfigError("a classification prompt cannot generate; send it a classify request")
    out = []
    for req, row in zip(requests, rows):  # settings differ per request
        if req.temperature > 0:
            raise ConfigError(f"temperature {req.temperature}: a {kind.name.value} prompt decodes greedily here; "
                              f"send temperature 0 (sampling is implemented for causal LMs)")
        if req.max_new_tokens <= 0:
            out.append(Generation("", "length", 0, 0))
            continue
        text, finish, prompt_tokens, completion_tokens = model.generate_one(row, max_new_tokens=req.max_new_tokens,
                                                                            stop=req.stop)
        if req.on_text is not None and text:
            req.on_text(text)
        out.append(Generation(text, finish, prompt_tokens, completion_tokens))
    return out
