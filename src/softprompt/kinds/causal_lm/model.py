"""The causal LM's prompted model: the text model (`kinds/text_model.py`) with what a decoder-only backbone adds --
label words scored at the answer position (several tokens from the context's key/value cache), generation
targets after the context, a cached prompt prefix, deep prompts' per-layer prefixes and the frozen-input split.

The backbone is held, never subclassed, and only the prompt has trainable parameters. Vocabulary logits are
computed only at answer positions, never over the whole sequence.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ...errors import ConfigError, IncompatiblePromptError
from ...methods.deep import refuse_unfit_backbone
from ...prompts import SoftPrompt
from ...protocols import Backbone
from ...scoring import Recomputed, label_word_scores, same_words_per_row, token_log_likelihood
from ...template import Encoded, Template, left_pad
from ...verbalizer import Verbalizer
from ..text_model import TextPromptedModel


class PromptedModel(TextPromptedModel):
    """Frozen causal LM + soft prompt, placed by a template.

    Examples:
        >>> model = PromptedModel(backbone, prompt, Template.parse("[soft:20] Review: {text} Sentiment: {label}"),
        ...                       Verbalizer.from_spec(["negative", "positive"]))          # doctest: +SKIP
        >>> model.class_scores(model.make_batch([{"text": "Great fun."}]))                  # doctest: +SKIP
        tensor([[-3.2, -0.4]])
    """

    def __init__(self, backbone: Backbone, prompt: SoftPrompt, template: Template,
                 verbalizer: Verbalizer | None = None, *, max_length: int = 128) -> None:
        deep = prompt.method == "deep"
        if deep and template.num_virtual_tokens:
            raise ConfigError("a deep prompt lives in every layer's keys/values: use a template without [soft:N] "
                              "markers (and no --placement)")
        super().__init__(backbone, prompt, template, verbalizer, max_length=max_length)
        self.deep = deep
        if self.deep:
            refuse_unfit_backbone(backbone)
            expected = backbone.kv_layout()                               # (layers, kv heads, head dim)
            prefix = prompt.layer_prefix()
            found = (len(prefix), prefix[0][0].shape[1], prefix[0][0].shape[3])
            if found != expected:
                raise IncompatiblePromptError(f"deep prompt for {found[0]} layers x {found[1]} kv heads x {found[2]}, "
                                              f"but backbone '{backbone.name}' has {' x '.join(map(str, expected))}")
        # The frozen-input split (see hidden()) is off where no key/value cache could hold the frozen columns, and
        # for a DePT prompt, which changes the text tokens too, so no column runs ahead of it. A DePT prompt's
        # leading soft tokens are still cached for inference: the text after the cache continues its offsets'
        # positions from the cached columns' own text (BOS) -- `cached_text_columns`.
        self.split_frozen_input = not self.offsets_text and backbone.keeps_keys_values
        self.use_prompt_cache = True                     # inference: reuse a leading prompt's keys/values (hidden())
        self._prompt_cache: tuple | None = None
        self.cache_budget: Any = None  # an inference.cache_budget.PromptCacheBudget a bank shares among its prompts

    def row_columns(self, fields: Mapping[str, str]) -> int:
        return super().row_columns(fields) - self.cache_plan()[0]  # what the cached prefix replaces

    def answer_columns(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, T) True at a training row's target tokens (generation), which are answers, not text; else None."""
        return batch["labels"] != -100 if "labels" in batch else None

    def hidden(self, batch: Mapping[str, torch.Tensor], past_key_values: Any = None,
               use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        """Final hidden states (B, T', d) of the last T' positions (T' = T unless the frozen-input split ran).

        At inference (no gradients), when the template starts with soft tokens, their keys/values are
        computed once per prompt (`prompt_cache`) and reused: only the remaining columns run.

        When gradients are on and the soft tokens come after the input (suffix placement, or a template
        whose [soft:N] runs follow the text), the columns before the first soft token do not depend on the
        prompt: they run once without gradients into a key/value cache, and only the remaining columns run
        forward and backward (attending to that cache). The result equals the single pass; only the
        returned hidden states start at the split.
        """
        if self._prompt_cache_applies(past_key_values):
            hidden, cache, _ = self._hidden_after_prompt_cache(batch)
            return hidden, (cache if use_cache else None)
        if self.deep and past_key_values is None:  # training a deep prompt: its prefixes carry gradients
            layers = [(k.to(self.backbone.dtype), v.to(self.backbone.dtype)) for k, v in self.prompt.layer_prefix()]
            hidden, cache, _ = self._hidden_after_prompt_cache(batch, layers)
            return hidden, (cache if use_cache else None)
        split = 0
        if self.split_frozen_input and past_key_values is None and not use_cache and torch.is_grad_enabled():
            split = self._frozen_columns(batch["soft_index"])
        if not split:
            return super().hidden(batch, past_key_values, use_cache)
        with self._autocast():
            head = {k: batch[k][:, :split] for k in ("input_ids", "soft_index", "position_ids")}
            tail = {k: batch[k][:, split:] for k in ("input_ids", "soft_index", "position_ids")}
            with torch.no_grad():
                _, cache = self.backbone.hidden_states(self.backbone.embed(head["input_ids"]),
                                                       batch["attention_mask"][:, :split], head["position_ids"],
                                                       use_cache=True)
            hidden, _ = self.backbone.hidden_states(self.embed(tail), batch["attention_mask"],
                                                    tail["position_ids"], past_key_values=cache, use_cache=True)
            return hidden, None

    @property
    def prompt_prefix_length(self) -> int:
        """Leading positions identical in every row (BOS and the soft runs before any text) that a cached prefix
        replaces; 0 if none (and for deep prompts, whose cache adds columns instead of replacing any)."""
        if self.deep:
            return 0
        count = 0
        for seg in self.template.segments:
            if seg.kind != "soft":
                break
            count += seg.length
        return len(self.encoder.bos) + count if count else 0

    @property
    def prefix_cache_width(self) -> int:
        """Columns of the prompt's key/value cache: its replaced leading positions, or a deep prompt's tokens."""
        return self.prompt.num_virtual_tokens if self.deep else self.prompt_prefix_length

    @property
    def cached_text_columns(self) -> int:
        """Text (not soft) columns inside the cached prefix -- its BOS: where the text after it continues DePT's
        text positions from."""
        return len(self.encoder.bos) if self.cache_plan()[0] else 0

    def cache_plan(self) -> tuple[int, int]:
        """(row columns the cached prefix replaces, cache columns) for inference; (0, 0) = no cached prefix."""
        if self.deep:
            return 0, self.prompt.num_virtual_tokens
        if self.use_prompt_cache and self.prompt_prefix_length and self._prefix_cache_holds():
            return self.prompt_prefix_length, self.prompt_prefix_length
        return 0, 0

    def prompt_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (keys, values) of the constant prefix, batch 1; recomputed only when the prompt changes (or
        after a bank's cache budget dropped it)."""
        key = tuple((p.data_ptr(), p._version) for p in self.prompt.parameters()) + (
            self.backbone.device, self.backbone.dtype)
        entry = self._prompt_cache  # one read: a budget may drop the attribute from another thread
        if entry is None or entry[0] != key:
            if self.deep:
                with torch.no_grad():
                    layers = [(k.to(self.backbone.dtype), v.to(self.backbone.dtype))
                              for k, v in self.prompt.layer_prefix()]
            else:
                bos = self.encoder.bos
                count = self.prompt_prefix_length - len(bos)
                prefix = left_pad([Encoded(bos + [self.encoder.pad_id] * count,
                                           [-1] * len(bos) + list(range(count)))], self.encoder.pad_id)
                prefix = {k: v.to(self.backbone.device) for k, v in prefix.items()}
                with torch.no_grad(), self._autocast():
                    _, cache = self.backbone.hidden_states(self.embed(prefix), prefix["attention_mask"],
                                                           prefix["position_ids"], use_cache=True)
                layers = [(layer[0], layer[1]) for layer in cache]
            entry = self._prompt_cache = (key, _packed(layers))
            if self.cache_budget is not None:
                self.cache_budget.forget(self)
        if self.cache_budget is not None:
            self.cache_budget.used(self, entry[1])
        return entry[1]

    def drop_prompt_cache(self) -> None:
        """Forget the cached keys/values (a cache budget evicting them); the next use recomputes them."""
        self._prompt_cache = None

    def _prompt_cache_applies(self, past_key_values: Any = None) -> bool:
        return (past_key_values is None and not torch.is_grad_enabled()
                and (self.deep or (self.use_prompt_cache and self.prompt_prefix_length > 0
                                   and self._prefix_cache_holds())))

    def _prefix_cache_holds(self) -> bool:
        """Whether the backbone can hold a prompt's leading columns as a key/value prefix before each row's padding:
        its layers keep keys/values and attend by position."""
        return self.backbone.keeps_keys_values and self.backbone.attends_by_position

    def _hidden_after_prompt_cache(self, batch: Mapping[str, torch.Tensor], layers: list | None = None):
        """Run a batch after the prompt's key/value prefix (`layers`, default the cached `prompt_cache()`):
        for prompts at the start the prefix replaces their leading columns; a deep prompt's adds columns
        before the row. Returns hidden states of the columns that ran, the cache, and its mask [prefix | rest]."""

        skip, width = self.prompt_prefix_length, self.prefix_cache_width
        mask = batch["attention_mask"]                                    # (B, T), left-padded
        rows, columns = mask.shape
        pads = columns - mask.sum(dim=1, keepdim=True)                     # (B, 1)
        column = torch.arange(columns - skip, device=mask.device).expand(rows, -1)
        source = torch.where(column < pads, column, column + skip)         # skip each row's prefix columns
        rest = {k: batch[k].gather(1, source) for k in ("input_ids", "soft_index", "position_ids")}
        rest["position_ids"] = rest["position_ids"] + (width - skip)       # a deep prefix's positions come first
        rest["attention_mask"] = torch.cat([mask.new_ones(rows, width), mask.gather(1, source)], dim=1)
        layers = self.prompt_cache() if layers is None else layers
        layers = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in layers]
        cache = self.backbone.new_cache(layers)
        own = {**rest, "attention_mask": mask.gather(1, source)}            # the rest's columns alone
        with self._autocast():
            hidden, cache = self.backbone.hidden_states(self.embed(own, self.cached_text_columns),
                                                        rest["attention_mask"], rest["position_ids"],
                                                        past_key_values=cache, use_cache=True)
        return hidden, cache, rest["attention_mask"]

    @staticmethod
    def _frozen_columns(soft_index: torch.Tensor, minimum: int = 8) -> int:
        """Leading columns that hold no soft token in any row (0 when too few to be worth a split)."""
        has_soft = (soft_index >= 0).any(dim=0)
        if not bool(has_soft.any()):
            return 0
        first = int(has_soft.float().argmax())
        return first if first >= minimum else 0

    # ---- batches -------------------------------------------------------------------------------------------
    def _generation_batch(self, examples, label_field) -> dict[str, torch.Tensor]:
        eos = self.backbone.tokenizer.eos_token_id
        rows, target_lengths = [], []
        for ex in examples:
            target: list[int] = []
            if label_field is not None and label_field in ex:
                target = self.encoder.answer_ids(str(ex[label_field]))[: self.max_length // 2]
                target = target + ([eos] if eos is not None else [])
            ctx = self.encoder.encode(ex, reserve=len(target))
            rows.append(Encoded(ctx.input_ids + target, ctx.soft_index + [-1] * len(target)))
            target_lengths.append(len(target))
        batch = left_pad(rows, self.encoder.pad_id)
        if any(target_lengths):
            labels = torch.full_like(batch["input_ids"], -100)
            for row, n in enumerate(target_lengths):
                if n:
                    labels[row, -n:] = batch["input_ids"][row, -n:]
            batch["labels"] = labels
        return batch

    # ---- classification -----------------------------------------------------------------------------------
    def word_scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Log-likelihood of every label word at the answer position: (B, W).

        Multi-token words: the context runs once (B rows, with its key/value cache); the cache is repeated per
        word and only the words' own leading tokens run after it (B x W rows of at most K-1 tokens). Each example
        is thus encoded once however many classes there are -- with 18 topic words of up to 4 tokens, a training
        step costs about what a one-token verbaliser's does, where a row per (example, word) cost 18x.
        """
        if self.max_word_tokens == 1:
            hidden, _ = self.hidden(batch)                                # (B, T, d)
            return self.word_scores_from_hidden(hidden)
        if torch.is_grad_enabled() and self.backbone.gradient_checkpointing:
            # A recomputed layer would append to the key/value cache a second time: use full rows instead.
            hidden, _ = self.hidden(self._per_word_batch(batch))          # (B*W, T + K-1, d)
            return self.word_scores_from_hidden(hidden)
        return self._multi_token_word_scores(batch)

    def _per_word_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One row per (example, word): the context then the word's leading tokens, left-padded so that every
        row ends at its word's last input token (the layout `word_scores_from_hidden` reads)."""
        rows = batch["input_ids"].shape[0]
        k = self.max_word_tokens - 1
        per_word = []
        for ids in self.word_ids:
            n, pad = len(ids) - 1, k - len(ids) + 1
            word = torch.tensor(ids[:-1], dtype=torch.long, device=batch["input_ids"].device).expand(rows, -1)
            fill = batch["input_ids"].new_full((rows, pad), self.encoder.pad_id)
            per_word.append({
                "input_ids": torch.cat([fill, batch["input_ids"], word], dim=1),
                "soft_index": torch.cat([torch.full_like(fill, -1), batch["soft_index"], torch.full_like(word, -1)], 1),
                "attention_mask": torch.cat([torch.zeros_like(fill), batch["attention_mask"], torch.ones_like(word)], 1),
                "position_ids": torch.cat([torch.zeros_like(fill), batch["position_ids"],
                                           batch["position_ids"][:, -1:] + 1 + torch.arange(n, device=word.device)], 1)})
        return {name: torch.stack([w[name] for w in per_word], dim=1).flatten(0, 1) for name in per_word[0]}

    def _context_cache(self, batch: Mapping[str, torch.Tensor]):
        """(last hidden state (B, d), key/value cache, its attention mask (B, C), next position (B, 1))."""
        if self._prompt_cache_applies() or self.deep:
            layers = None
            if self.deep and torch.is_grad_enabled():  # training: the prefixes carry gradients
                layers = [(k.to(self.backbone.dtype), v.to(self.backbone.dtype)) for k, v in self.prompt.layer_prefix()]
            hidden, cache, mask = self._hidden_after_prompt_cache(batch, layers)
            shift = self.prefix_cache_width - self.prompt_prefix_length
            return hidden[:, -1], cache, mask, batch["position_ids"][:, -1:] + 1 + shift
        with self._autocast():
            embeds = self.embed(batch)
            keep = self.backbone.keeps_keys_values
            hidden, cache = self.backbone.hidden_states(embeds, batch["attention_mask"], batch["position_ids"],
                                                        use_cache=keep)
        if not keep:  # state-space or recurrent layers: the words' tokens run again after the context's vectors
            cache = Recomputed(embeds, batch["position_ids"])
        return hidden[:, -1], cache, batch["attention_mask"], batch["position_ids"][:, -1:] + 1

    def _multi_token_word_scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        last, cache, mask, position = self._context_cache(batch)
        rows = last.shape[0]
        scores = label_word_scores(self.backbone, last, same_words_per_row(rows, self.word_ids), cache=cache,
                                   mask=mask, next_position=position, pad_id=self.encoder.pad_id)
        return scores.view(rows, len(self.word_ids))

    def word_scores_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, d) hidden states of this model's rows (B*W rows for multi-token words) -> (B, W)."""
        if self.max_word_tokens == 1:
            words = same_words_per_row(hidden.shape[0], self.word_ids)
            return label_word_scores(self.backbone, hidden[:, -1], words).view(-1, len(self.word_ids))
        k = self.max_word_tokens
        num_words = len(self.word_ids)
        window = self._log_probs(hidden[:, -k:])                          # (B*W, K, V)
        window = window.view(-1, num_words, k, window.shape[-1])          # (B, W, K, V)
        # Right-align each word's tokens in the K-wide window; -1 marks unused slots.
        targets = torch.full((num_words, k), -1, dtype=torch.long, device=hidden.device)
        for w, ids in enumerate(self.word_ids):
            targets[w, k - len(ids):] = torch.tensor(ids)
        return token_log_likelihood(window, targets)                     # (B, W)

    # ---- loss ----------------------------------------------------------------------------------------------
    def generation_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean negative log-likelihood of the target tokens (logits only at those positions)."""
        hidden, _ = self.hidden(batch)                                    # (B, T', d), T' <= T
        # Position t predicts token t+1. With the frozen-input split, hidden covers only the last T' columns;
        # targets follow the soft tokens, so none sits in the split's first column.
        labels = batch["labels"][:, -hidden.shape[1]:][:, 1:]
        where = labels != -100
        log_probs = self._log_probs(hidden[:, :-1][where])                # (N, V)
        return F.nll_loss(log_probs, labels[where])


def _packed(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same keys/values as views of one block. A prompt's cache is 2 x layers small tensors (~8 KB each on
    smollm2-135m) left behind among a prefix pass's freed temporaries, which keep about twice their bytes resident
    in a server holding many prompts (docs/results.md, "Many prompts on one server"). One block per prompt is one
    allocation, freed whole when the cache is dropped."""
    tensors = [t for pair in layers for t in pair]
    if not tensors or any(t.dtype != tensors[0].dtype or t.device != tensors[0].device for t in tensors):
        return layers
    block = torch.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype, device=tensors[0].device)
    views, offset = [], 0
    for tensor in tensors:
        view = block[offset:offset + tensor.numel()].view(tensor.shape)
        view.copy_(tensor)
        views.append(view)
        offset += tensor.numel()
    return [(views[i], views[i + 1]) for i in range(0, len(views), 2)]


def assemble(backbone: Backbone, prompt: SoftPrompt, template: Template, verbalizer: Verbalizer | None, *,
             max_length: int = 128, **_: Any) -> PromptedModel:
    """The causal LM's prompted model (a head or pooling, which other text kinds take, does not apply)."""
    return PromptedModel(backbone, prompt, template, verbalizer, max_length=max_length)
