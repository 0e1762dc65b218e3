"""The interfaces every kind implements: `Backbone` (a frozen model) and `Prompted` (a prompt on it, with its
template or head: a prompted model), the enumerations they share, and `Capability` (what a kind can do beyond
training and evaluation). Protocols beyond `Prompted` say what a model can do (`Servable`, `CachesPromptPrefix`,
`JoinsMixedBatches`, `DecodesItself`).

Words: a *task* is what a prompt is trained to do -- a dataset's rows and labels (`data.TaskData`), of a
`TaskType` (classification or generation); a multitask prompt holds one view per task (`TaskPrompt`). The trained
thing that does it is a *prompted model* (`Prompted`).

Nothing here guesses from tensor shapes: each backbone kind says where its input embeddings are, how to run
a forward pass from embeddings, and how to turn hidden states into vocabulary scores.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch


class TaskType(str, Enum):
    CLASSIFICATION = "classification"
    GENERATION = "generation"


class BackboneKind(str, Enum):
    CAUSAL_LM = "causal_lm"   # decoder-only LM: label words scored at the answer position
    MASKED_LM = "masked_lm"   # bidirectional encoder with an MLM head: label words scored at [MASK]
    ENCODER = "encoder"       # bidirectional encoder, no vocabulary head: a small trainable head classifies
    SEQ2SEQ = "seq2seq"       # encoder-decoder: prompt in the encoder input, the decoder scores or generates
    VISION = "vision"         # Vision Transformer: prompt tokens between [CLS] and the patches (VPT), a head
    CLIP = "clip"             # CLIP image + text encoders: learnable context in the class prompts (CoOp)
    SPEECH = "speech"         # Whisper: prompt tokens on the decoder input (and optionally the encoder output)


@runtime_checkable
class Backbone(Protocol):
    """What prompt tuning needs from a frozen model."""

    name: str
    kind: BackboneKind
    tokenizer: Any
    autocast_dtype: torch.dtype | None   # mixed precision over fp32 weights (weight-training baselines); else None
    keeps_keys_values: bool              # every layer caches keys/values (False: state-space or recurrent layers)

    @property
    def hidden_size(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> input embeddings (B, T, d)."""

    def input_embedding_matrix(self) -> torch.Tensor:
        """The (V, d) input embedding matrix (used to initialise and explain prompts)."""

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor, past_key_values: Any = None,
                      use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        """Run the frozen body from embeddings: -> final hidden states (B, T, d) and the key/value cache."""

    def token_logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (..., d) -> logits (..., V), or only the columns `token_ids` when given."""

    def kv_layout(self) -> tuple[int, int, int]:
        """(layers, key/value heads, head dim) of the attention cache (deep prompts' shape)."""

    def keys_values(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer keys and values of a sequence of input vectors (n, d): [layers, n, kv_heads, head_dim]."""

    def fingerprint(self) -> str: ...

    def shape_metadata(self) -> dict[str, int | None]:
        """Layer and head counts recorded in a prompt file."""

    def tokenizer_metadata(self) -> dict[str, Any] | None:
        """Name and vocabulary size of the tokenizer recorded in a prompt file (None without one)."""


class Capability(str, Enum):
    """What a kind of prompted model can do beyond train / evaluate / predict / info (which every kind does)."""

    SERVE = "serving from a prompt bank (softprompt serve, /v1/classify)"
    MIXED_BATCH = "mixed-prompt batches (several prompts in one backbone pass)"
    GENERATE = "generation (--task generation, /v1/completions)"
    DEEP = "deep prompts (--method deep)"
    RESIDUAL = "residual prompt tuning (--method residual)"
    DEPT = "DePT prompts (--method dept)"
    INIT_FROM = "prompt transfer (--init-from)"
    MULTITASK = "multitask prompt tuning (--method multitask)"
    EXPLAIN = "softprompt explain (nearest vocabulary tokens)"
    PEFT_EXPORT = "PEFT interop (softprompt export / import-peft)"
    BASELINES = "weight-training baselines (softprompt compare --methods lora,adapter,full,probe,zeroshot)"
    GRADIENT_CHECKPOINTING = "gradient checkpointing (--gradient-checkpointing)"
    DRY_RUN = "memory estimates before loading (train --dry-run)"
    SPLIT_PASSES = "long batches split into passes of fewer rows (--pass-tokens)"


@runtime_checkable
class Prompted(Protocol):
    """What training, evaluation, prompt files, the bank, the server, compare and explain read from a prompted
    model, whatever its kind. Rows are mappings (`{"text": ..., "label": ...}`, `{"image": tensor, ...}`).

    Examples:
        >>> model = load_prompted_model("runs/rt/prompt.safetensors", backbone)       # doctest: +SKIP
        >>> model.class_scores(model.make_batch([{"text": "Great fun."}], None))       # doctest: +SKIP
        tensor([[-3.2, -0.4]])
    """

    backbone: Backbone
    prompt: Any            # the trainable module: `method`, `num_virtual_tokens`, `to_tensors()`
    task: TaskType

    @property
    def labels(self) -> tuple[str, ...]:
        """Class labels in score order (classification)."""

    @property
    def input_fields(self) -> tuple[str, ...]:
        """The row fields the model reads (`text`, `premise`, `image`, `audio`, ...)."""

    @property
    def template_source(self) -> str:
        """How inputs and soft tokens are laid out, as written in the prompt file (`[soft:20] {text} {label}`)."""

    @property
    def max_length(self) -> int:
        """Token budget of a text input (0 for inputs that are not text)."""

    def make_batch(self, rows: Sequence[Mapping[str, Any]], label_field: str | None = "label") -> dict[str, torch.Tensor]:
        """Rows -> tensors on the CPU (with `targets` / `labels` when rows carry `label_field`)."""

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss and figures of a batch on the backbone's device."""

    def class_scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, C) class scores, higher is more likely (classification)."""

    def classify(self, inputs: Sequence[Any], batch_size: int = 32) -> list[str]:
        """Predicted label per input (a bare value fills the single input field)."""

    def file_metadata(self) -> dict[str, Any]:
        """What a prompt file needs beyond the prompt's tensors to rebuild this model (template, verbaliser,
        labels, a head's shape, kind-specific options)."""

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """Every trained tensor (the prompt's and a head's), CPU fp32, by the name the file stores it under."""


@runtime_checkable
class Servable(Prompted, Protocol):
    """A prompted task a server holds (its kind has `Capability.SERVE`): inputs are text fields."""

    def widen_for_inputs(self, max_input_tokens: int) -> None:
        """Let every input field hold `max_input_tokens` tokens before anything is cut (as far as the backbone's
        positions allow)."""

    def row_columns(self, fields: Mapping[str, str]) -> int:
        """Backbone columns one row of these fields costs (the batcher's budget)."""


@runtime_checkable
class CachesPromptPrefix(Protocol):
    """A prompted model whose leading prompt columns run once into a key/value cache that later rows reuse (a
    bank shares one memory budget among such caches)."""

    cache_budget: Any             # inference.cache_budget.PromptCacheBudget | None

    def cache_plan(self) -> tuple[int, int]:
        """(row columns the cached prefix replaces, cache columns); (0, 0) when there is no cached prefix."""

    def prompt_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The prompt prefix's keys/values per layer (computed once, then reused)."""

    def drop_prompt_cache(self) -> None:
        """Forget the cached prefix (a bank's cache budget evicting it); the next use recomputes it."""


@runtime_checkable
class JoinsMixedBatches(Servable, CachesPromptPrefix, Protocol):
    """What a mixed-prompt batch (`inference/batch.py`) and generation read from a prompted model whose kind has
    `Capability.MIXED_BATCH`: its encoder and label words, its prompt's vectors (and text offsets), and its
    cached prompt prefix. The batch embeds many prompts' rows at once; every score goes through the one scorer
    (`scoring.label_word_scores`), as the model's own `class_scores` does."""

    encoder: Any                  # template.TemplateEncoder: rows -> token ids and the soft-index plan
    verbalizer: Any               # verbalizer.Verbalizer | None (generation)
    word_ids: list[list[int]]     # each label word's token ids, in verbaliser order
    max_word_tokens: int
    use_prompt_cache: bool

    @property
    def offsets_text(self) -> bool:
        """Whether the prompt also shifts its text tokens' embeddings (DePT: `prompt.text_offsets`)."""

    @property
    def cached_text_columns(self) -> int:
        """Text columns inside the cached prefix (where the text after it continues the offsets' positions)."""

    def hidden(self, batch: Mapping[str, torch.Tensor], past_key_values: Any = None,
               use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        """Hidden states (B, T, d) of whole rows, and their key/value cache when `use_cache`."""


@runtime_checkable
class DecodesItself(Protocol):
    """A prompted model that generates through its own decoder, greedily (an encoder-decoder), instead of the
    causal path's `inference.generate` (sampling, stop strings, a shared key/value cache)."""

    def generate(self, inputs: Sequence[str | Mapping[str, Any]], *, max_new_tokens: int = 32) -> list[str]:
        """The generated text per input (a bare string fills the single input field)."""
