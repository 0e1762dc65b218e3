"""`softprompt train --dry-run`: the memory a training run needs, worked out without loading any weight.

The backbone is built from its config on PyTorch's meta device (shapes only, no storage), so a 7B or 70B
config costs a second. Parameter memory is counted from those shapes at the run's dtype (or the bitsandbytes
width for `--load-in`). Activation memory is not a rule of thumb: one forward of a full batch (every row at
`--max-length` plus the virtual tokens) runs on the meta model under a saved-tensor hook that adds up every
tensor autograd keeps for the backward pass -- the same count a real run makes (tested equal on real models).
Frozen weights are not counted twice (autograd keeps views of them), and with `--gradient-checkpointing` the
recomputation of one layer in the backward pass is added to the layer inputs kept.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from ..config import TrainConfig
from ..errors import ConfigError
from ..hub import BUILTIN_BACKBONES, BUILTIN_FOLDERS, builtin_backbone_dir, builtin_folder, resolve_precision
from ..kinds.table import KINDS, detect_kind
from ..kinds.int8 import int8_bytes
from ..kinds.causal_lm.backbone import SDPA_FROM_KEYS, checkpoint_layers, decoder_layers_of, keeps_keys_values
from ..methods import METHODS, Shape
from ..protocols import Capability

GIB = 1024 ** 3


@dataclass
class MemoryEstimate:
    model: str
    device: str
    dtype: str
    parameters: int
    batch_tokens: tuple[int, int]
    rows: list[tuple[str, int, str]]  # (component, bytes, how counted)
    shardable: int = 0  # weight bytes FSDP splits (decoder layers; the input embedding when untied)
    unit: int = 0  # the largest of those units (gathered whole while it runs)

    @property
    def total(self) -> int:
        return sum(r[1] for r in self.rows)

    def sharded_total(self, processes: int) -> int:
        """Per process with `accelerate launch --config_file examples/accelerate/fsdp.yaml`: the split weights
        divided over the processes, plus two whole units (the one running and the one prefetched)."""
        return self.total - self.shardable + self.shardable // processes + 2 * self.unit

    def table(self) -> str:
        b, t = self.batch_tokens
        lines = [f"dry run: {self.model} ({self.parameters / 1e6:,.0f}M parameters, {self.dtype}) on {self.device}, "
                 f"batch {b} x {t} tokens; nothing loaded", "",
                 f"{'component':<26}{'GiB':>10}  how counted"]
        for name, count, how in self.rows:
            lines.append(f"{name:<26}{count / GIB:>10.3f}  {how}")
        lines.append(f"{'total per process':<26}{self.total / GIB:>10.3f}  (+ runtime: CUDA context ~0.5 GiB, "
                     f"allocator slack)")
        lines.append(f"data parallel over N processes (accelerate launch / torchrun): the same per process, "
                     f"{b} rows each, N x {b} rows per step")
        for n in (2, 8):
            lines.append(f"{f'sharded over {n} (FSDP)':<26}{self.sharded_total(n) / GIB:>10.3f}  per process: "
                         f"decoder layers (and an untied input embedding) split, two units gathered at a time")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "dtype": self.dtype, "parameters": self.parameters,
                "batch_tokens": list(self.batch_tokens), "total_bytes": self.total,
                "components": [{"name": n, "bytes": b, "how": h} for n, b, h in self.rows]}


def _model_folder(name: str) -> Path:

    if name in BUILTIN_BACKBONES:
        return builtin_backbone_dir(name)
    if name in BUILTIN_FOLDERS:
        return builtin_folder(BUILTIN_FOLDERS[name])
    path = Path(name)
    if not (path / "config.json").is_file():
        raise ConfigError(f"--dry-run --model {name}: needs a built-in name or a local folder with config.json "
                          f"(a config alone is enough: no weights are read)")
    return path


def saved_activation_bytes(model: torch.nn.Module, batch: int, tokens: int, dtype: torch.dtype,
                           device: str = "meta") -> int:
    """Bytes autograd keeps for the backward pass of one decoder forward with gradient-carrying inputs.

    Views of frozen parameters are not counted (they are the weights); each storage counts once.
    """
    params = {id(p) for p in model.parameters()}
    seen: set[int] = set()
    keep: list[torch.Tensor] = []  # hold the tensors so ids stay unique during the pass
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in params and id(base) not in seen:
            seen.add(id(base))
            keep.append(base)
            total += base.untyped_storage().nbytes()
        return tensor

    hidden = model.config.hidden_size
    embeds = torch.zeros(batch, tokens, hidden, dtype=dtype, device=device, requires_grad=True)
    mask = torch.ones(batch, tokens, dtype=torch.long, device=device)
    positions = torch.arange(tokens, device=device).expand(batch, tokens)
    traced = nullcontext()
    if not keeps_keys_values(model.config):
        # A recurrent layer's padding mask skips an all-ones mask by reading a value (.item()), which the meta
        # device lacks; traced, transformers keeps the mask instead (the same work as a padded batch).
        from transformers import masking_utils  # start-up time

        traced = mock.patch.object(masking_utils, "is_tracing", lambda *_: True)
    with traced, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
    return total


def _parameter_bytes(model: torch.nn.Module, dtype: torch.dtype, load_in: str | None) -> int:
    size = torch.tensor([], dtype=dtype).element_size()
    if load_in is None:
        return sum(p.numel() for p in model.parameters()) * size
    per = 1.0 if load_in == "8bit" else 0.5 + 0.127 / 8  # bitsandbytes int8; nf4 + double-quantised constants
    total, seen = 0.0, set()
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # a tied output head is the input embedding: counted once
                continue
            seen.add(id(param))
            linear = isinstance(module, torch.nn.Linear) and pname == "weight" and "lm_head" not in name
            if linear and load_in == "int8":  # softprompt's own: int8 values and a scale per group
                total += int8_bytes(param.shape[0], param.shape[1], size)
            else:
                total += param.numel() * (per if linear else size)
    return int(total)


def estimate_training_memory(config: TrainConfig) -> MemoryEstimate:
    """Parameter, prompt/optimiser and activation memory of the run `config` describes (no weights loaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM  # start-up time


    device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_precision(config.precision.value, device)
    folder = _model_folder(config.model)
    hf_config = AutoConfig.from_pretrained(folder)
    KINDS[detect_kind(hf_config)].require(Capability.DRY_RUN, f"--model {config.model}")
    method = METHODS[config.method]
    count = config.num_virtual_tokens or method.default_tokens
    tokens = config.max_length + count  # rows at --max-length, with the prompt's columns (a deep prompt's keys)
    # load_backbone: SDPA off the CPU; on the CPU eager attention, switched to SDPA for long sequences
    fused = torch.device(device).type != "cpu" or tokens >= SDPA_FROM_KEYS
    with torch.device("meta"):  # eager on the meta device (SDPA's mask checks need real values)
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation="eager")
    model.requires_grad_(False)
    parameters = sum(p.numel() for p in model.parameters())
    hidden = hf_config.hidden_size
    if not method.in_input and not keeps_keys_values(hf_config):
        raise ConfigError(f"--model {config.model}: a {hf_config.model_type} model has layers without keys/values "
                          f"(state-space or recurrent), where a --method {config.method.value} prompt would live: use "
                          "--method prompt or --method dept")
    heads = getattr(hf_config, "num_attention_heads", None) or 1  # a state-space model has none (and no deep prompt)
    shape = Shape(hidden, hf_config.num_hidden_layers, getattr(hf_config, "num_key_value_heads", None) or heads,
                  getattr(hf_config, "head_dim", None) or hidden // heads)
    prompt_params = method.parameters(config, shape, count)
    # worst case: every row at --max-length, with the virtual tokens (`tokens`, above)
    batch = config.batch_size
    activations = saved_activation_bytes(model, batch, tokens, dtype)
    how = "saved for backward, counted on a meta-device forward (eager attention)"
    if fused:  # a fused SDPA kernel keeps no T x T scores: take eager's quadratic term out, measured from T/2
        half = saved_activation_bytes(model, batch, tokens // 2, dtype)
        quadratic = max(0, activations - 2 * half) * tokens ** 2 / (tokens ** 2 - 2 * (tokens // 2) ** 2)
        activations -= int(quadratic)
        how = "meta-device count less the T x T attention scores a fused SDPA kernel does not keep"
    rows = [("backbone weights", _parameter_bytes(model, dtype, config.load_in),
             f"{parameters:,} parameters at " + (config.load_in or str(dtype).replace("torch.", ""))),
            ("prompt + grad + AdamW", prompt_params * 16,
             f"{prompt_params:,} fp32 values x (weight, grad, 2 moments)")]
    if config.gradient_checkpointing:
        layer_list = decoder_layers_of(model) or []
        per_layer = activations // max(1, len(layer_list))
        checkpoint_layers(layer_list)
        kept = saved_activation_bytes(model, batch, tokens, dtype)
        rows += [("activations (layer inputs)", kept, "gradient checkpointing: inputs of every layer"),
                 ("one layer recomputed", per_layer, "its activations during its backward")]
    else:
        rows.append(("activations", activations, how))
    vocab = hf_config.vocab_size
    rows.append(("answer logits", batch * vocab * 4 * 2, "fp32 log-probabilities and their gradient at the answer "
                                                          "position"))
    size = torch.tensor([], dtype=dtype).element_size()
    units = [sum(p.numel() for p in layer.parameters()) * size for layer in decoder_layers_of(model) or []]
    embedding, output = model.get_input_embeddings(), model.get_output_embeddings()
    if output is None or output.weight is not embedding.weight:
        units.append(embedding.weight.numel() * size)
    return MemoryEstimate(str(config.model), device, str(dtype).replace("torch.", ""), parameters, (batch, tokens),
                          rows, shardable=sum(units), unit=max(units, default=0))
