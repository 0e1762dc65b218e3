"""Hugging Face PEFT prompt-tuning adapters <-> softprompt prompt files.

PEFT's format: a folder with `adapter_config.json` (`peft_type: PROMPT_TUNING`, `task_type: CAUSAL_LM`,
`num_virtual_tokens`, `token_dim`, ...) and `adapter_model.safetensors` holding `prompt_embeddings` [n, d].
PEFT always prepends the prompt to the model input, so only prefix prompts export; the text around the input
(our template) is not part of PEFT's format: a PEFT user feeds the rendered template text as the input. The
export also writes `softprompt.json` (our metadata), which `import_peft` uses to restore template and label
words; a PEFT-trained adapter imports with the template and labels given by the caller.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from ..cache import cache_is_complete, cache_root
from ..errors import ConfigError, PromptFileError
from ..formats import read_prompt_file, read_prompt_tensors, save_prompt, write_export_folder
from ..hub import BUILTIN_BACKBONES
from ..kinds.table import KINDS
from ..kinds.causal_lm.model import PromptedModel
from ..prompts import SoftPrompt
from ..protocols import Backbone, BackboneKind, Capability
from ..template import Placement, Template, build_template
from ..verbalizer import Verbalizer

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
OUR_METADATA = "softprompt.json"
EXPORT_FILES = {PEFT_CONFIG, PEFT_WEIGHTS, OUR_METADATA, "README.md"}
_NO_PEFT_EQUIVALENT = {"dept": ": PEFT's prompt-tuning adapter has no place for DePT's low-rank offset of the text "
                               "embeddings (text_offset_a / text_offset_b)"}


def peft_template_body(template: Template) -> str:
    """The template without its leading [soft:N] run; refuse prompts PEFT cannot represent."""
    soft = [s for s in template.segments if s.kind == "soft"]
    if len(soft) != 1 or template.segments[0].kind != "soft":
        raise ConfigError(f"PEFT prompt tuning supports prefix prompts only; template '{template.source}' places "
                          f"soft tokens elsewhere: retrain with --placement prefix")
    return template.source[template.source.index("]") + 1:]


def _loadable_base(name: str) -> str:
    """A base-model reference PEFT's `AutoPeftModelForCausalLM` can open: a built-in name becomes the folder its
    weights were converted into on this machine (when they were); anything else is kept (a folder or hub id)."""
    if name in BUILTIN_BACKBONES:
        folder = cache_root() / "backbones" / name
        if cache_is_complete(folder):
            return str(folder)
    return name


def export_peft(prompt_path: str | Path, out_dir: str | Path, *, base_model_name_or_path: str | None = None,
                overwrite: bool = False) -> Path:
    """Write a PEFT prompt-tuning adapter folder for a prefix prompt file (atomically: temp folder, rename).
    A non-empty target is refused unless it holds only a previous export and `overwrite` is set."""
    out = Path(out_dir)
    _, meta = read_prompt_tensors(prompt_path)
    KINDS[BackboneKind(meta["backbone"]["kind"])].require(Capability.PEFT_EXPORT, str(prompt_path))
    if meta.get("method", "prompt") != "prompt":  # a residual prompt is saved folded: it is a plain prompt here
        raise ConfigError(f"{prompt_path} is a {meta.get('method')} prompt; PEFT export covers prompt tuning "
                          f"(--method prompt){_NO_PEFT_EQUIVALENT.get(meta.get('method'), '')}")
    embeddings, meta = read_prompt_file(prompt_path)
    body = peft_template_body(Template.parse(meta["template"]))
    backbone = meta["backbone"]
    config = {
        "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "inference_mode": True,
        "num_virtual_tokens": int(embeddings.shape[0]), "token_dim": int(embeddings.shape[1]),
        "num_transformer_submodules": 1, "num_attention_heads": backbone.get("num_attention_heads"),
        "num_layers": backbone.get("num_layers"), "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None, "tokenizer_kwargs": None, "modules_to_save": None, "revision": None,
        "base_model_name_or_path": base_model_name_or_path or _loadable_base(backbone["name"]), "auto_mapping": None,
    }
    def write(staging: Path) -> None:
        (staging / PEFT_CONFIG).write_text(json.dumps(config, indent=2))
        save_file({"prompt_embeddings": embeddings.contiguous()}, str(staging / PEFT_WEIGHTS))
        (staging / OUR_METADATA).write_text(json.dumps({**meta, "peft_input_template": body}, indent=1))

    return write_export_folder(out, EXPORT_FILES, overwrite, write, what="adapter")


def read_peft_adapter(peft_dir: str | Path) -> tuple[torch.Tensor, dict, dict | None]:
    """(prompt_embeddings, adapter_config, our metadata or None) of a PEFT prompt-tuning folder."""
    folder = Path(peft_dir)
    try:
        config = json.loads((folder / PEFT_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PromptFileError(f"{folder}: no readable {PEFT_CONFIG} ({exc})") from None
    if config.get("peft_type") != "PROMPT_TUNING":
        raise PromptFileError(f"{folder}: peft_type is {config.get('peft_type')!r}; only PROMPT_TUNING imports")
    if config.get("task_type") not in ("CAUSAL_LM", None):
        raise PromptFileError(f"{folder}: task_type {config.get('task_type')!r}; only CAUSAL_LM imports")
    weights = folder / PEFT_WEIGHTS
    if not weights.is_file():
        raise PromptFileError(f"{folder}: {PEFT_WEIGHTS} not found (a pickled adapter_model.bin is not accepted)")
    tensors = load_file(str(weights))
    if "prompt_embeddings" not in tensors:
        raise PromptFileError(f"{weights}: no 'prompt_embeddings' tensor")
    ours = json.loads((folder / OUR_METADATA).read_text()) if (folder / OUR_METADATA).is_file() else None
    return tensors["prompt_embeddings"].float(), config, ours


def import_peft(peft_dir: str | Path, out_path: str | Path, backbone: Backbone, *, template: str | None = None,
                labels: Sequence[str] | None = None, label_words: Sequence[str] = (), max_length: int = 128) -> Path:
    """Turn a PEFT prompt-tuning adapter into a prompt file for `backbone`.

    `template` is the input template without soft markers (the prompt is placed as a prefix, as PEFT does);
    with `labels` the prompt classifies, else it generates. Defaults come from an export's `softprompt.json`.
    """
    embeddings, config, ours = read_peft_adapter(peft_dir)
    if embeddings.shape[1] != backbone.hidden_size:
        raise ConfigError(f"{peft_dir}: prompt width {embeddings.shape[1]} != backbone '{backbone.name}' hidden size "
                          f"{backbone.hidden_size}; pass the adapter's base model with --model")
    if ours is not None:
        template = template or ours.get("peft_input_template")
        labels = labels or ours.get("labels")
        if not label_words and ours.get("verbalizer"):
            label_words = [f"{k}={','.join(v)}" for k, v in ours["verbalizer"].items()]
        max_length = ours.get("max_length", max_length)
    if not template:
        raise ConfigError("importing a PEFT adapter needs --template (the input format it was trained with, "
                          "e.g. 'Review: {text}\\nSentiment: {label}')")
    prompt_template = build_template(template, Placement.PREFIX, int(embeddings.shape[0]))
    verbalizer = Verbalizer.from_spec(list(labels), list(label_words)) if labels else None
    if verbalizer is None and prompt_template.answer_field == "label":
        raise ConfigError("a classification template needs --labels (or write {target} for generation)")
    model = PromptedModel(backbone, SoftPrompt(embeddings.to(backbone.device)), prompt_template, verbalizer,
                          max_length=max_length)
    return save_prompt(out_path, model, init="peft-import", placement=Placement.PREFIX.value,
                       imported_from={"peft_dir": str(peft_dir), "base_model": config.get("base_model_name_or_path")})
