"""Mixed-prompt batches: rows of different prompts, classification and generation, in one backbone pass.

Each row is encoded by its own prompt's template. Rows whose template starts with soft tokens do not run
those columns: their keys/values come from the prompt's cached prefix (`JoinsMixedBatches.prompt_cache`, computed
once per prompt), right-aligned into one left-padded prefix block; the rest of the row continues at the
positions after its prefix. Soft tokens later in a template index one table of the batch's prompt vectors.
Classification rows are scored from the prefill (label words of several tokens: each row's context cache is
repeated per word and only the words' tokens run after it, so a row costs one context pass however many classes
its prompt has); generation rows then decode together in a `Decoder`, each with its own sampling settings, stop
strings and random generator, leaving as they finish. Rows of a later prefill join a running `Decoder` between
two of its steps (continuous batching: `start_batch` + `Decoder.step`, as the server runs them); `run_batch`
decodes one batch to the end.

Every row's result equals running its prompt alone (to float tolerance; tested), and a seeded sampled row
draws the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Sequence

import torch

from ..errors import ConfigError
from ..protocols import Backbone, JoinsMixedBatches, TaskType
from ..scoring import (Recomputed, backbone_autocast, cache_layers, continue_context, label_word_scores,
                       place_soft_tokens, text_positions)
from ..template import Encoded, left_pad

# CPU matmul kernels (oneDNN) are built and cached per shape; every new shape costs time and memory (a
# server's RSS creeps up as it meets new ones). Batches therefore take few shapes: widths round up to a
# multiple of 16 and row counts up to the next bucket, with masked padding that changes no row's result.
SHAPE_MULTIPLE = 16
ROW_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def _row_bucket(count: int) -> int:
    for size in ROW_BUCKETS:
        if count <= size:
            return size
    return -(-count // 32) * 32


@dataclass
class Request:
    """One row of work for a prompted model: classify `inputs`, or continue its rendered template.

    `inputs` is a string (fills the template's single input field) or a mapping of field -> text.
    `temperature` 0 means greedy decoding. `on_text` (generation) receives each new piece of text as it is
    decoded (stop strings and incomplete characters held back), for streaming. A server sets `abandoned` when the
    row's client has gone: a generating row then stops at its next token.
    """

    model: JoinsMixedBatches
    inputs: Mapping[str, str] | str
    task: Literal["classify", "generate"] = "classify"
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None
    on_text: Callable[[str], None] | None = None
    abandoned: bool = False


@dataclass(frozen=True)
class Classification:
    label: str
    scores: dict[str, float]


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


def fields_of(model: JoinsMixedBatches, inputs: Mapping[str, str] | str) -> Mapping[str, str]:
    """A request's input as template fields; a plain string fills the template's first input field."""
    fields = model.input_fields
    if isinstance(inputs, str):
        if not fields:
            raise ConfigError(f"the template '{model.template_source}' has no input field for a text")
        return {fields[0]: inputs}
    missing = [name for name in fields if name not in inputs]
    if missing:
        raise ConfigError(f"input is missing field(s) {missing} of the template '{model.template_source}'")
    return inputs


@dataclass
class BatchRow:
    """One backbone row: the part after the cached prefix, and that prefix's columns in the cache (0 = none)."""

    model: JoinsMixedBatches
    rest: Encoded
    prefix: int


@dataclass
class Decoding:
    request: Request
    prompt_tokens: int
    generator: torch.Generator
    ids: list[int] = field(default_factory=list)
    emitted: int = 0
    finish: str | None = None
    text: str = ""
    index: int = 0                        # the row's place in the requests of its `start_batch`

    def result(self) -> Generation:
        return Generation(self.text, self.finish or "length", self.prompt_tokens, len(self.ids))


def split_cached_prefix(model: JoinsMixedBatches, encoded: Encoded) -> BatchRow:
    """A request's encoded row as the batch runs it: the columns its prompt's cached prefix replaces are dropped
    (the cache holds them), keeping at least one column to read the next token from."""
    skip, width = model.cache_plan()
    if width and len(encoded.input_ids) > skip:  # keep at least one column to read the next token from
        return BatchRow(model, Encoded(encoded.input_ids[skip:], encoded.soft_index[skip:]), width)
    return BatchRow(model, encoded, 0)


@torch.no_grad()
def run_batch(backbone: Backbone, requests: Sequence[Request]) -> list[Classification | Generation]:
    """Run classification and generation requests of any prompts on `backbone` together; results in order."""
    results, decoder = start_batch(backbone, requests)
    while decoder.active:
        for state in decoder.step():
            results[state.index] = state.result()
    return results  # type: ignore[return-value]


@torch.no_grad()
def start_batch(backbone: Backbone, requests: Sequence[Request], decoder: "Decoder | None" = None
                ) -> tuple[list[Classification | Generation | None], "Decoder"]:
    """The prefill of `requests`: results of the rows that are done (classification, nothing to generate), None
    for generation rows, which join `decoder` (a new one when None) to be decoded by its `step`s; a finished
    row's `Decoding.index` is its place in `requests`."""
    decoder = decoder if decoder is not None else Decoder(backbone)
    if not requests:
        return [], decoder
    for req in requests:
        if req.model.backbone is not backbone:
            raise ConfigError("every request's prompt must be bound to the batch's backbone")
        if req.task == "classify" and req.model.task is not TaskType.CLASSIFICATION:
            raise ConfigError("a generation prompt cannot classify; send it a completion request")
    rows: list[BatchRow] = []
    spans: list[tuple[int, int]] = []                                    # (first row, number of rows) per request
    prompt_tokens: list[int] = []
    for req in requests:
        model = req.model
        fields = fields_of(model, req.inputs)
        reserve = model.max_word_tokens - 1 if req.task == "classify" else 0
        ctx = model.encoder.encode(fields, reserve=reserve)
        spans.append((len(rows), 1))
        prompt_tokens.append(len(ctx.input_ids))
        rows.append(split_cached_prefix(model, ctx))

    multi = [i for i, req in enumerate(requests) if req.task == "classify" and req.model.max_word_tokens > 1]
    want_cache = bool(multi) or any(req.task == "generate" and req.max_new_tokens > 0 for req in requests)
    filler = BatchRow(rows[0].model, Encoded([backbone.tokenizer.pad_token_id], [-1]), 0) if rows else None
    rows += [filler] * (_row_bucket(len(rows)) - len(rows))              # results ignore these rows
    hidden, cache, mask, positions = _prefill(backbone, rows, want_cache)   # hidden (R, T, d)
    classify = [i for i, req in enumerate(requests) if req.task == "classify"]
    word_scores: dict[int, torch.Tensor] = {}
    if classify:  # every classification row's words in one call: one vocabulary projection, one word pass
        words = [(spans[i][0], ids) for i in classify for ids in requests[i].model.word_ids]
        every = label_word_scores(backbone, hidden[:, -1], words, cache=cache, mask=mask,
                                  next_position=positions[:, -1:] + 1, pad_id=backbone.tokenizer.pad_token_id,
                                  row_count=_row_bucket)
        start = 0
        for i in classify:
            count = len(requests[i].model.word_ids)
            word_scores[i] = every[start:start + count][None]                             # (1, W)
            start += count

    results: list[Classification | Generation | None] = [None] * len(requests)
    decoding: list[Decoding] = []
    for i, req in enumerate(requests):
        if req.task == "classify":
            model = req.model
            scores = model.verbalizer.class_scores(word_scores[i].float())[0]
            labels = model.verbalizer.labels
            results[i] = Classification(labels[int(scores.argmax())], {l: float(s) for l, s in zip(labels, scores)})
        elif req.max_new_tokens <= 0:
            results[i] = Generation("", "length", prompt_tokens[i], 0)
        else:
            seed = req.seed if req.seed is not None else random.getrandbits(63)
            decoding.append(Decoding(req, prompt_tokens[i], torch.Generator().manual_seed(seed), index=i))
    if decoding:
        select = torch.tensor([spans[state.index][0] for state in decoding], device=hidden.device)
        if len(decoding) != len(rows):
            cache.batch_select_indices(select)
        decoder.join(decoding, hidden.index_select(0, select)[:, -1], cache, mask.index_select(0, select),
                     positions.index_select(0, select)[:, -1:])
    return results, decoder


def _prefill(backbone: Backbone, rows: Sequence[BatchRow], want_cache: bool):
    """One forward over every row: (hidden (R, T, d), cache, attention mask over cache columns, position ids)."""
    device = backbone.device
    # One table of the prompt vectors that rows still place themselves (soft tokens after the cached prefix).
    offsets: dict[int, int] = {}
    tables = []
    for row in rows:
        if id(row.model) not in offsets and row.model.prompt.num_input_tokens:
            offsets[id(row.model)] = sum(t.shape[0] for t in tables)
            tables.append(row.model.prompt())
    rests = [Encoded(r.rest.input_ids, [s + offsets[id(r.model)] if s >= 0 else -1 for s in r.rest.soft_index])
             for r in rows]
    batch = {k: v.to(device) for k, v in left_pad(rests, backbone.tokenizer.pad_token_id, SHAPE_MULTIPLE).items()}
    prefix = torch.tensor([r.prefix for r in rows], device=device)
    positions = batch["position_ids"] + prefix[:, None]                   # rows continue after their prefix
    mask = batch["attention_mask"]
    cache = None
    width = -(-int(prefix.max()) // SHAPE_MULTIPLE) * SHAPE_MULTIPLE
    if width:
        cache, prefix_mask = _prefix_block(backbone, rows, width)
        mask = torch.cat([prefix_mask, mask], dim=1)
    tokens = backbone.embed(batch["input_ids"])                           # (R, T, d)
    if tables:
        tokens = place_soft_tokens(tokens, batch["soft_index"], torch.cat(tables))
    tokens = _offset_text(rows, tokens, batch)
    keep = backbone.keeps_keys_values
    with backbone_autocast(backbone):
        hidden, cache = backbone.hidden_states(tokens, mask, positions, past_key_values=cache,
                                               use_cache=keep and (want_cache or cache is not None))
    if not keep and want_cache:  # state-space or recurrent layers: continuations run again after these vectors
        cache = Recomputed(tokens.to(backbone.dtype), positions)
    return hidden, cache, mask, positions


def _offset_text(rows: Sequence[BatchRow], tokens: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Add each DePT prompt's low-rank offsets to its rows' text tokens, as the model's own `embed` does; a row
    after a cached prefix continues the text positions from the prefix's own text columns (its BOS)."""
    groups: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        if row.model.offsets_text:
            groups.setdefault(id(row.model), []).append(index)
    if not groups:
        return tokens
    positions = text_positions(batch["soft_index"], batch["attention_mask"])    # (R, T)
    first = torch.tensor([r.model.cached_text_columns if r.prefix and r.model.offsets_text else 0 for r in rows],
                         device=positions.device)
    positions = torch.where(positions >= 0, positions + first[:, None], positions)
    offsets = torch.zeros_like(tokens)
    for members in groups.values():
        index = torch.tensor(members, device=tokens.device)
        offsets[index] = rows[members[0]].model.prompt.text_offsets(positions[index]).to(tokens.dtype)
    return tokens + offsets


def _prefix_block(backbone: Backbone, rows: Sequence[BatchRow], width: int):
    """A key/value cache (R rows, `width` columns) holding each row's cached prompt prefix, right-aligned."""

    device = backbone.device
    groups: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        if row.prefix:
            groups.setdefault(id(row.model), []).append(index)
    layers = None
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    for members in groups.values():
        model = rows[members[0]].model
        count = rows[members[0]].prefix
        index = torch.tensor(members, device=device)
        per_layer = model.prompt_cache()                                  # [(1, H, P, hd) keys, values]
        if layers is None:
            layers = [tuple(t.new_zeros(len(rows), t.shape[1], width, t.shape[3]) for t in kv) for kv in per_layer]
        for (keys, values), (k, v) in zip(layers, per_layer):
            keys[index, :, width - count:] = k
            values[index, :, width - count:] = v
        mask[index, width - count:] = 1
    return backbone.new_cache(layers), mask


def pick_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Next token from one row's logits (V,): greedy at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p            # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def advance_decoding(state: Decoding, token: int, tokenizer, eos: int | None) -> None:
    """Add one token to a row: finish on end-of-sequence, a stop string or the token budget; stream new text."""
    req = state.request
    if req.abandoned:  # nobody is waiting for the rest
        state.finish = "stop"
        return
    if token == eos:
        state.finish = "stop"
    else:
        state.ids.append(token)
        state.text = tokenizer.decode(state.ids, skip_special_tokens=True)
        for stop in req.stop:
            if stop and stop in state.text:
                state.text = state.text[: state.text.index(stop)]
                state.finish = "stop"
        if state.finish is None and len(state.ids) >= req.max_new_tokens:
            state.finish = "length"
    if req.on_text is None:
        return
    ready = state.text
    if state.finish is None:  # hold back an incomplete character and a possible start of a stop string
        ready = ready.rstrip("\ufffd")
        for stop in req.stop:
            for n in range(min(len(stop) - 1, len(ready)), 0, -1):
                if ready.endswith(stop[:n]):
                    ready = ready[:-n]
                    break
    if len(ready) > state.emitted:
        req.on_text(ready[state.emitted:])
        state.emitted = len(ready)


def _left_pad_columns(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if not missing:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class Decoder:
    """Generation rows decoding together, one token per row per `step`: rows leave as they finish and rows of a
    later prefill `join` between steps (continuous batching), their caches left-padded to one width (padding
    columns are masked; every row keeps its own positions)."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.states: list[Decoding] = []
        self.last: torch.Tensor | None = None       # (G, d) hidden state the next token is read from
        self.cache = None                           # key/value cache (G rows), or a `Recomputed` context
        self.mask: torch.Tensor | None = None       # (G, columns) attention mask over the cache
        self.positions: torch.Tensor | None = None  # (G, 1) position of each row's last token

    @property
    def active(self) -> bool:
        return bool(self.states)

    def join(self, states: list[Decoding], last: torch.Tensor, cache, mask: torch.Tensor,
             positions: torch.Tensor) -> None:
        if not self.states:
            self.states, self.last, self.cache, self.mask, self.positions = list(states), last, cache, mask, positions
            return

        width = max(self.mask.shape[1], mask.shape[1])
        if isinstance(cache, Recomputed):  # padding columns are masked and take position 0
            self.cache = Recomputed(*(torch.cat([_left_pad_columns(old, width, 1), _left_pad_columns(new, width, 1)])
                                      for old, new in ((self.cache.inputs, cache.inputs),
                                                       (self.cache.positions, cache.positions))))
        else:
            layers = [(torch.cat([_left_pad_columns(k0, width, 2), _left_pad_columns(k1, width, 2)]),
                       torch.cat([_left_pad_columns(v0, width, 2), _left_pad_columns(v1, width, 2)]))
                      for (k0, v0), (k1, v1) in zip(cache_layers(self.cache), cache_layers(cache))]
            self.cache = self.backbone.new_cache(layers)
        self.mask = torch.cat([_left_pad_columns(self.mask, width, 1), _left_pad_columns(mask, width, 1)])
        self.positions = torch.cat([self.positions, positions])
        self.last = torch.cat([self.last, last])
        self.states += states

    @torch.no_grad()
    def step(self) -> list[Decoding]:
        """Pick every row's next token (streaming its text), drop the rows that finished (returned), and run one
        forward for the rest."""
        backbone = self.backbone
        tokenizer = backbone.tokenizer
        logits = backbone.token_logits(self.last).float().cpu()           # (G, V)
        tokens = []
        for row, state in enumerate(self.states):
            token = pick_token(logits[row], state.request.temperature, state.request.top_p, state.generator)
            advance_decoding(state, token, tokenizer, tokenizer.eos_token_id)
            tokens.append(token)
        keep = [row for row, state in enumerate(self.states) if state.finish is None]
        finished = [state for state in self.states if state.finish is not None]
        if not keep:
            self.states, self.last, self.cache, self.mask, self.positions = [], None, None, None, None
            return finished
        if len(keep) != len(self.states):
            index = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask, self.positions = self.mask.index_select(0, index), self.positions.index_select(0, index)
            self.states = [self.states[row] for row in keep]
            tokens = [tokens[row] for row in keep]
        ids = torch.tensor(tokens, device=self.mask.device)[:, None]        # (G, 1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(keep), 1)], dim=1)
        self.positions = self.positions + 1
        embeds = backbone.embed(ids)
        with backbone_autocast(backbone):
            hidden, self.cache = continue_context(backbone, self.cache, embeds, self.mask, self.positions)
        if isinstance(self.cache, Recomputed):  # the new token joins the context the next step runs again
            self.cache = Recomputed(torch.cat([self.cache.inputs, embeds], 1),
                                    torch.cat([self.cache.positions, self.positions], 1))
        self.last = hidden[:, -1]
        return finished
