"""CoOp (context optimisation, Zhou et al. 2022, "Learning to Prompt for Vision-Language Models") on a frozen CLIP.

Each class's text prompt is `[V]_1 ... [V]_M {classname}.`: M learnable context vectors in the text model's
token-embedding space, then the class name's own tokens. As in CoOp's code, the prompt "X X ... X {classname}."
is tokenised with CLIP's tokenizer, its tokens embedded, and the M placeholder positions replaced by the context;
the frozen text transformer runs from those embeddings and the feature is taken at the end-of-text token, then
projected. Class scores = CLIP's logit scale x cosine(image feature, class text feature). Both towers stay frozen.

- Unified context (default): one set of M vectors shared by every class; `class_specific=True`: C x M vectors.
- Class token position: `end` (default), `middle` (half the context, the name, the other half) or `front`.
- Init: a phrase ("a photo of a": its token embeddings, M = its token count) or random (normal, std 0.02).

The prompt file stores `prompt_embeddings` (M, d), or (C*M, d) class-specific, class i's context in rows
i*M .. i*M+M-1, and `coop` metadata (class_specific, n_ctx, class_token_position, classnames, init, init_text).
Rows are `{"image": (3, H, W) float in [0, 1] or uint8, "label": classname}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ...config import TrainConfig
from ...data import TaskData
from ...errors import ConfigError, PromptFileError
from ...prompts import SoftPrompt
from ...scoring import backbone_autocast, place_soft_tokens
from ..classifier import InputSpec, PromptedClassifier

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
PLACEHOLDER = "X"        # CoOp's placeholder word for a context vector
DEFAULT_N_CTX = 16       # CoOp's context length with a random init
RANDOM_INIT_STD = 0.02   # CoOp's random init: normal, std 0.02


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


class CoOpModel(PromptedClassifier):
    """Frozen CLIP + learnable text context per class prompt; scores = logit_scale x cosine(image, class text).

    Examples:
        >>> prompt = CoOpModel.initial_prompt(backbone, ["cat", "dog"], init_text="a photo of a")  # doctest: +SKIP
        >>> model = CoOpModel(backbone, prompt, ["cat", "dog"])                                      # doctest: +SKIP
        >>> model.classify([torch.rand(3, 224, 224)])                                                # doctest: +SKIP
    """

    def __init__(self, backbone: Any, prompt: SoftPrompt, classnames: Sequence[str], *, class_specific: bool = False,
                 class_token_position: str = "end", field: str = "image", init: str = "random",
                 init_text: str | None = None) -> None:
        classnames = [str(name) for name in classnames]
        if len(set(classnames)) != len(classnames):
            raise ConfigError(f"CoOp class names must be distinct, got {classnames}")
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ConfigError(f"class token position must be one of {', '.join(CLASS_TOKEN_POSITIONS)}, got "
                              f"{class_token_position!r}")
        if prompt.hidden_size != backbone.hidden_size:
            raise ConfigError(f"context vectors have width {prompt.hidden_size}; backbone '{backbone.name}' embeds "
                              f"text tokens in {backbone.hidden_size}")
        rows, classes = prompt.num_virtual_tokens, max(len(classnames), 1)
        if class_specific and rows % classes:
            raise ConfigError(f"a class-specific context has n_ctx x {classes} classes rows, got {rows}")
        n_ctx = rows // classes if class_specific else rows
        if n_ctx < 1:
            raise ConfigError(f"CoOp needs at least 1 context vector (n_ctx >= 1), got {n_ctx}")
        super().__init__(backbone, prompt, InputSpec(f"[soft:{n_ctx}] {{{field}}} {{label}}", (field,), rows),
                         classnames)
        self.n_ctx = n_ctx
        self.class_specific = bool(class_specific)
        self.class_token_position = class_token_position
        self.init = init
        self.init_text = init_text
        token_ids, soft_index = self._class_prompts(classnames)
        self.register_buffer("token_ids", token_ids, persistent=False)                 # (C, L)
        self.register_buffer("soft_index", soft_index, persistent=False)               # (C, L): prompt row or -1
        with torch.no_grad():
            self.register_buffer("token_embeds", backbone.embed(token_ids).detach(), persistent=False)  # (C, L, d)

    # -- construction -------------------------------------------------------------------------------------
    @staticmethod
    def initial_prompt(backbone: Any, classnames: Sequence[str], *, n_ctx: int | None = None,
                       init_text: str | None = None, class_specific: bool = False,
                       generator: torch.Generator | None = None) -> SoftPrompt:
        """CoOp's init: the token embeddings of `init_text` (n_ctx = its token count), else normal(0, 0.02) with
        `n_ctx` (default 16) vectors; class-specific contexts are C such sets (the phrase repeated per class)."""
        classes = len(classnames)
        if init_text is not None:
            ids = _encode(backbone.tokenizer, init_text.strip()) if init_text.strip() else []
            if not ids:
                raise ConfigError(f"--init-text {init_text!r} encodes to no tokens")
            if n_ctx is not None and n_ctx != len(ids):
                raise ConfigError(f"--init-text {init_text!r} is {len(ids)} tokens, so n_ctx is {len(ids)}; "
                                  f"--num-virtual-tokens {n_ctx} disagrees (leave it out)")
            with torch.no_grad():
                vectors = backbone.input_embedding_matrix()[torch.tensor(ids, device=backbone.device)]
            vectors = vectors.detach().to("cpu", torch.float32)
            if class_specific:
                vectors = vectors.repeat(classes, 1)
        else:
            n_ctx = DEFAULT_N_CTX if n_ctx is None else int(n_ctx)
            if n_ctx < 1:
                raise ConfigError(f"CoOp needs at least 1 context vector (n_ctx >= 1), got {n_ctx}")
            rows = n_ctx * (classes if class_specific else 1)
            vectors = torch.randn(rows, backbone.hidden_size, generator=generator) * RANDOM_INIT_STD
        return SoftPrompt(vectors.to(backbone.device))

    def _class_prompts(self, classnames: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (C, L) of each class prompt in its final order, and the prompt row placed at each position
        (-1: keep the token). CoOp tokenises "X X .. X {name}." and replaces the X positions (1..M) by the
        context; `middle` / `front` move the name's tokens (CoOp's `name_lens` = the name's own token count)."""
        backbone, tokenizer, m = self.backbone, self.backbone.tokenizer, self.n_ctx
        placeholder = _encode(tokenizer, PLACEHOLDER)
        if len(placeholder) != 1 or _encode(tokenizer, " ".join([PLACEHOLDER] * m)) != placeholder * m:
            raise ConfigError(f"backbone '{backbone.name}': its tokenizer does not encode the placeholder "
                              f"{PLACEHOLDER!r} as one token per context vector")
        sequences, slots = [], []
        for index, name in enumerate(classnames):
            ids = list(tokenizer(" ".join([PLACEHOLDER] * m + [name]) + ".").input_ids)
            if ids[1:1 + m] != placeholder * m:
                raise ConfigError(f"class {name!r}: the tokenizer does not put the {m} context placeholders right "
                                  f"after its start token (got ids {ids[:m + 1]})")
            name_ids = _encode(tokenizer, name)
            n = len(name_ids)
            if self.class_token_position != "end" and ids[1 + m:1 + m + n] != name_ids:
                raise ConfigError(f"class {name!r} does not encode to the same tokens inside the prompt as alone: "
                                  f"class token position {self.class_token_position!r} needs that; use 'end'")
            context = list(range(1, 1 + m))
            name_pos = list(range(1 + m, 1 + m + n))
            if self.class_token_position == "end":
                middle = context + name_pos
            elif self.class_token_position == "front":
                middle = name_pos + context
            else:
                half = m // 2
                middle = context[:half] + name_pos + context[half:]
            order = [0] + middle + list(range(1 + m + n, len(ids)))
            base = index * m if self.class_specific else 0
            sequences.append([ids[i] for i in order])
            slots.append([base + (i - 1) if 1 <= i <= m else -1 for i in order])
        longest = max(len(s) for s in sequences)
        if longest > backbone.context_length:
            name = classnames[max(range(len(sequences)), key=lambda i: len(sequences[i]))]
            raise ConfigError(f"class {name!r} with {m} context tokens makes a {longest}-token prompt; backbone "
                              f"'{backbone.name}' has {backbone.context_length} text positions: shorten the context "
                              f"(--num-virtual-tokens / --init-text) or the class name")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        pad = 0 if pad is None else pad
        ids = torch.tensor([s + [pad] * (longest - len(s)) for s in sequences], dtype=torch.long)
        soft = torch.tensor([s + [-1] * (longest - len(s)) for s in slots], dtype=torch.long)
        return ids.to(backbone.device), soft.to(backbone.device)

    # -- forward ------------------------------------------------------------------------------------------
    def inputs(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        field = self.spec.input_fields[0]
        images = [torch.as_tensor(r[field]) for r in rows]
        pixels = torch.stack([im.float() / 255.0 if im.dtype == torch.uint8 else im.float() for im in images])
        return {"pixel_values": pixels}

    def prompt_embeddings(self) -> torch.Tensor:
        """(C, L, d): each class prompt's token embeddings with the context in place."""
        return place_soft_tokens(self.token_embeds, self.soft_index, self.prompt())

    def text_features(self) -> torch.Tensor:
        """(C, P) fp32, L2-normalised: one text feature per class prompt (gradients flow to the context).

        Without gradients (evaluation, serving) they are computed once per prompt state and reused across
        batches; a change to the context vectors (an optimiser step, a loaded state) recomputes them."""
        if torch.is_grad_enabled():
            return self._text_features()
        key = tuple((p.data_ptr(), p._version) for p in self.prompt.parameters())
        cached = self.__dict__.get("_features_cache")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_features_cache"] = (key, self._text_features())
        return cached[1]

    def _text_features(self) -> torch.Tensor:
        with backbone_autocast(self.backbone):
            features = self.backbone.text_features(self.prompt_embeddings(), self.token_ids)
        return F.normalize(features.float(), dim=-1)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, P) fp32, L2-normalised. The image tower is frozen and unprompted: no graph is kept."""
        with torch.no_grad(), backbone_autocast(self.backbone):
            features = self.backbone.image_features(pixel_values.to(self.backbone.device))
        return F.normalize(features.float(), dim=-1)

    def class_scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        images = self.image_features(batch["pixel_values"])
        return self.backbone.logit_scale.float() * images @ self.text_features().t()

    # -- prompt file --------------------------------------------------------------------------------------
    def file_metadata(self) -> dict[str, Any]:
        return {**super().file_metadata(), "coop": {"class_specific": self.class_specific, "n_ctx": self.n_ctx,
                         "class_token_position": self.class_token_position, "classnames": list(self.labels),
                         "init": self.init, "init_text": self.init_text,
                         "image_shape": list(self.backbone.image_shape)}}


def build_coop_model(config: TrainConfig, backbone: Any, task: TaskData) -> CoOpModel:
    """The CoOp model `softprompt train` builds for a CLIP backbone.

    Reads `num_virtual_tokens` (n_ctx), `init` / `init_text`, `seed`, `coop_class_specific` and
    `coop_class_token_position`. `--init text` (or the default init with --init-text)
    starts from the phrase; `--init random` (or the default without --init-text) from normal(0, 0.02)."""
    if task.labels is None:
        raise ConfigError("a CLIP backbone classifies: give an image classification dataset (its labels are the "
                          "class names)")
    init, text = config.init.value, config.init_text
    if init == "text" or (init == "labels" and text):
        if not text:
            raise ConfigError("--init text needs --init-text 'a photo of a'")
        phrase, init = text, "text"
    elif init in ("random", "labels"):
        if text:
            raise ConfigError("--init random contradicts --init-text: drop one")
        phrase, init = None, "random"
    else:
        raise ConfigError(f"--init {init}: CoOp starts from --init-text 'a photo of a' or --init random")
    class_specific, position, seed = config.coop.class_specific, config.coop.class_token_position, config.seed
    prompt = CoOpModel.initial_prompt(backbone, task.labels, n_ctx=config.num_virtual_tokens,
                                      init_text=phrase, class_specific=class_specific,
                                      generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    return CoOpModel(backbone, prompt, task.labels, class_specific=class_specific, class_token_position=position,
                     field=task.text_fields[0], init=init, init_text=phrase)


def coop_model_from_file(backbone: Any, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> CoOpModel:
    """Rebuild a CoOp model from a prompt file's tensors and metadata on a loaded CLIP backbone."""
    coop = meta.get("coop")
    if not isinstance(coop, Mapping):
        raise PromptFileError("a CLIP prompt file without 'coop' metadata")
    template = str(meta.get("template", ""))
    field = template.split("{")[1].split("}")[0] if "{" in template else "image"
    model = CoOpModel(backbone, SoftPrompt(tensors["prompt_embeddings"].to(backbone.device)),
                      coop.get("classnames") or meta["labels"], class_specific=bool(coop.get("class_specific")),
                      class_token_position=coop.get("class_token_position", "end"), field=field,
                      init=coop.get("init", "random"), init_text=coop.get("init_text"))
    if model.n_ctx != int(coop.get("n_ctx", model.n_ctx)):
        raise PromptFileError(f"prompt file: {model.prompt.num_virtual_tokens} context rows disagree with its "
                              f"metadata (n_ctx {coop.get('n_ctx')}, class_specific {coop.get('class_specific')})")
    return model
