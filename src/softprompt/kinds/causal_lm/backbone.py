"""Frozen Hugging Face causal language models (Llama, GPT-2, Gemma, SmolLM, ... families)."""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import BackboneError
from ...frozen import FrozenBackbone
from ...protocols import BackboneKind
from ..loading import load_text_model


def decoder_layers_of(model: nn.Module) -> list[nn.Module] | None:
    body = model.base_model
    for name in ("layers", "h"):  # Llama / Gemma / Mistral families, GPT-2 family
        if hasattr(body, name):
            return list(getattr(body, name))
    return None


def checkpoint_layers(layers: list[nn.Module]) -> int:
    """Wrap each layer's forward in non-reentrant activation checkpointing (gradient-carrying passes only)."""
    from torch.utils.checkpoint import checkpoint  # only with --gradient-checkpointing

    wrapped = 0
    for layer in layers:
        if getattr(layer, "_softprompt_checkpointed", False):
            continue
        forward = layer.forward

        def run(*args, _forward=forward, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        layer.forward = run
        layer._softprompt_checkpointed = True
        wrapped += 1
    return wrapped


def _skip_shm_comm_build() -> None:
    """Keep deepspeed.comm from compiling its shared-memory all-reduce op on a CPU (g++, ~1.5 min on first use).

    Only DeepSpeed's tensor-parallel inference all-reduce uses that op; ZeRO-3 all-gathers over the process group.
    """

    import deepspeed.comm.torch  # noqa: F401  (the attribute `deepspeed.comm.torch` is the torch module)

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


class RegionalCompile:
    """Decoder layers whose gradient-carrying forwards go through `torch.compile` (one graph for all of them).

    Each layer's `forward` becomes a switch: with gradients on and no key/value cache (a training step) it calls
    the layer's compiled forward, else its eager one. Compiling a bound method of identical layers yields one
    graph that every layer reuses (dynamo lifts the weights to inputs), with dynamic batch and sequence sizes.
    A call with a cache stays eager: the cache's per-layer index would make one graph per layer. A compiled call
    that raises switches every layer back to eager for good, with one warning.
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        self.reason: str | None = None  # why the layers went back to eager, once they did
        self.compiled_calls = 0
        for layer in layers:
            eager = layer.forward
            compiled = torch.compile(eager, dynamic=True)
            layer.forward = functools.partial(self._run, eager, compiled)
            layer._softprompt_compiled = self

    def _run(self, eager, compiled, *args, **kwargs):
        if self.reason is None and torch.is_grad_enabled() and kwargs.get("cache") is None \
                and kwargs.get("past_key_values") is None and not kwargs.get("use_cache"):
            try:
                out = compiled(*args, **kwargs)
                self.compiled_calls += 1
                return out
            except Exception as err:  # a later recompile failed: eager from here on
                self.fall_back(err)
        return eager(*args, **kwargs)

    def fall_back(self, err: Exception) -> None:
        first_line = (str(err).strip().splitlines() or [""])[0][:200]
        self.reason = f"{type(err).__name__}: {first_line}"
        warnings.warn(f"softprompt: torch.compile of the decoder block failed ({self.reason}); running eager",
                      RuntimeWarning, stacklevel=2)


def _inductor_cache_dir() -> str:
    from torch._inductor.runtime.cache_dir_utils import cache_dir  # where inductor keeps compiled kernels

    try:
        return cache_dir()
    except Exception:  # private API: the default location if it moved
        return os.environ.get("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "torchinductor_*"))


# From this many attended positions on, SDPA's kernel is faster than eager attention on a CPU training step and
# keeps memory linear in length (benchmarks/studies/results/attention_by_length.md). Passes without gradients (evaluation,
# serving, generation) use SDPA at every length: its forward-only flash kernel beats eager there
# (benchmarks/serving/results/serve_levers.md).
SDPA_FROM_KEYS = 384


def _left_pads(mask: torch.Tensor) -> torch.Tensor | None:
    """Each row's count of leading pads (B,) when `mask` (B, T) is left-padded and some row has pads; else None."""
    pads = mask.shape[1] - mask.sum(dim=1)
    if not bool(pads.any()):
        return None  # no padding: SDPA already runs without a mask
    column = torch.arange(mask.shape[1], device=mask.device)
    if not bool(((column[None] >= pads[:, None]) == mask.bool()).all()):
        return None  # not plain left padding
    return pads


def _roll(values: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each row of `values` (B, T, ...) left by `shift` (B,) columns (right by a negative shift)."""
    columns = values.shape[1]
    index = (torch.arange(columns, device=values.device)[None] + shift[:, None]) % columns      # (B, T)
    index = index.view(*index.shape, *([1] * (values.dim() - 2))).expand_as(values)
    return values.gather(1, index)


# Layer types whose attention softprompt can mask by position (the rest -- chunked, linear, state-space -- keep the
# model's own masks and caches).
ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")


def attention_window(config: Any) -> int | None:
    """The sliding window (in positions) of a model with any sliding-window attention layer; None if every layer
    attends to all earlier positions (or if its layers are of a kind softprompt does not mask itself)."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        if set(layer_types) - set(ATTENTION_LAYER_TYPES):
            return None
        return int(window) if "sliding_attention" in layer_types else None
    return int(window) if getattr(config, "use_sliding_window", True) else None


def position_masks(attention_mask: torch.Tensor, position_ids: torch.Tensor, window: int,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive attention masks (B, 1, T, K) -- all earlier positions, and the last `window` positions -- from a
    2D mask over the K attended columns (a cached prefix, pads, the new T columns) and the new columns' positions.

    A window counts positions, not columns: transformers counts columns, so a row whose cached prompt sits before
    its left padding would lose the prompt from its window as soon as the batch holds a longer row. Every layout
    here numbers a row's attended columns 0, 1, 2, ... from the left, so a key's position is its running count.
    """
    keys = (attention_mask.cumsum(-1) - 1)[:, None, :]                                   # (B, 1, K)
    queries = position_ids[:, :, None]                                                   # (B, T, 1)
    allowed = attention_mask.bool()[:, None, :] & (keys <= queries)                      # (B, T, K)
    windowed = allowed & (queries - keys < window)
    blocked = torch.finfo(dtype).min
    full = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, blocked)
    sliding = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~windowed, blocked)
    return full[:, None], sliding[:, None]


def keeps_keys_values(config: Any) -> bool:
    """Whether every layer of the model caches keys and values (attention layers). False for state-space, recurrent
    and linear-attention layers (Mamba, Jamba, RecurrentGemma, ...), whose rows softprompt then runs whole: no
    cached prompt prefix, no deep prompt, and a continuation (a label word's later tokens, a generated token) runs
    again after its context's input vectors (`scoring.Recomputed`)."""
    from transformers import DynamicCache  # start-up time
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # a config transformers cannot lay a cache out for: an attention model's own cache
        return True
    return all(isinstance(layer, DynamicLayer) for layer in layers)


def logit_transform(config: Any):
    """What the model's own head does to its logits after the output projection, as a function of the logits:
    Gemma's final soft-capping, Cohere's logit scale, Granite's logit scaling (None: nothing)."""
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap:
        return lambda logits: torch.tanh(logits / softcap) * softcap
    scale = getattr(config, "logit_scale", None) if config.model_type.startswith("cohere") else None
    if scale:
        return lambda logits: logits * scale
    scaling = getattr(config, "logits_scaling", None) if config.model_type.startswith("granite") else None
    if scaling:
        return lambda logits: logits / scaling
    return None


class CausalLMBackbone(FrozenBackbone):
    """A frozen `*ForCausalLM` model behind the `Backbone` protocol.

    The wrapped model never trains: every parameter has `requires_grad=False` and the model stays in eval mode
    (dropout off) even when a parent module calls `.train()`.

    Examples:
        >>> backbone = CausalLMBackbone(model, tokenizer, name="my-model")   # doctest: +SKIP
        >>> hidden, _ = backbone.hidden_states(backbone.embed(ids), mask, positions)   # (B, T, d)
    """

    kind = BackboneKind.CAUSAL_LM

    def __init__(self, model: nn.Module, tokenizer: Any, name: str) -> None:
        super().__init__(model, name, tokenizer)
        if tokenizer.pad_token_id is None:
            # Left padding only needs some id; its embedding is masked out by the attention mask.
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        self.keeps_keys_values = keeps_keys_values(model.config)
        self._logit_transform = logit_transform(model.config)
        # A model loaded with eager attention (the CPU default) switches to SDPA for long sequences, where eager's
        # T x T scores per layer cost more than they save (benchmarks/studies/attention_by_length.py) -- if the model has
        # an SDPA path (BLOOM and MPT compute attention their own way) and its attention scores are not
        # soft-capped (Gemma 2), which only the eager kernel does.
        self.attention_by_length = (getattr(model.config, "_attn_implementation", None) == "eager"
                                    and bool(getattr(model, "_supports_sdpa", False))
                                    and not getattr(model.config, "attn_logit_softcapping", None))
        self.attention_window = attention_window(model.config)
        if not self.keeps_keys_values and not self._pads_exactly():
            raise BackboneError(
                f"--model {name}: a {model.config.model_type} model's layers without keys/values (state-space or "
                "recurrent) let left padding change a row's hidden states, and softprompt batches left-padded rows: "
                "use a model with attention layers (Llama, Qwen2, Gemma, Mistral, Phi-3, GPT-2, ...)")

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def compile_for_training(self) -> str:
        """Compile one decoder block for gradient-carrying forwards and reuse it for every layer (regional
        compilation); evaluation, serving and generation stay eager. Returns a line saying what happened.

        The layers share one compiled graph (their code is the same; weights are its inputs), so the cold start
        is one block's forward and backward: tens of seconds on a CPU, a few seconds once inductor's disk cache
        holds it. A dummy padded batch compiles it here, under the training step's autocast, so a failure (no
        C++ compiler, an unsupported op) is found now: the layers then stay eager, with one warning. Steps run
        faster than eager (element-wise work fused around the matmuls; measured in docs/results.md).
        """
        layers = self.decoder_layers()
        done = getattr(layers[0], "_softprompt_compiled", None)
        if done is not None:  # a second run on the same backbone (a sweep's trials)
            return "decoder block already compiled" + (f" (eager since: {done.reason})" if done.reason else "")
        regional = RegionalCompile(layers)
        started = time.perf_counter()
        try:
            self._compile_warm_up()
        except Exception as err:  # inductor or dynamo (the backward's compile): eager, which always works
            regional.fall_back(err)
        if regional.reason is not None:  # the forward's compile failed inside a layer, or the backward's here
            return f"compiling the decoder block failed ({regional.reason}); training runs eager"
        return (f"compiled one decoder block for {len(layers)} layers in {time.perf_counter() - started:.1f} s "
                f"(inductor's disk cache: {_inductor_cache_dir()})")

    def _compile_warm_up(self) -> None:
        """One forward and backward through the decoder on a padded dummy batch: the block compiles here."""
        from ...scoring import backbone_autocast  # the training step's autocast, so the compiled graph matches

        mask = torch.ones(2, 6, dtype=torch.long, device=self.device)
        mask[0, :2] = 0  # left padding, as training batches have
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = torch.zeros(2, 6, self.hidden_size, device=self.device, requires_grad=True)
        with backbone_autocast(self):
            hidden, _ = self.hidden_states(inputs.to(self.dtype), mask, positions)
        hidden.float().sum().backward()

    def decoder_layers(self) -> list[nn.Module]:
        layers = decoder_layers_of(self.model)
        if layers is None:
            raise BackboneError(f"backbone '{self.name}': no decoder layer list ('layers' or 'h')")
        return layers

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the decoder layers recompute their activations in the backward pass."""
        layers = decoder_layers_of(self.model) or []
        return any(getattr(layer, "_softprompt_checkpointed", False) for layer in layers)

    def enable_gradient_checkpointing(self) -> int:
        """Recompute each decoder layer in the backward pass instead of keeping its activations.

        Only the layer inputs stay in memory during a gradient-carrying forward; inference is unchanged. Works on
        the frozen model in eval mode (transformers' own switch needs train mode) and, being non-reentrant
        checkpointing, passes gradients through to the prompt even though no weight in the layer needs one.
        Returns the number of layers wrapped.
        """
        return checkpoint_layers(self.decoder_layers())

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def input_embedding_matrix(self) -> torch.Tensor:
        weight = self.model.get_input_embeddings().weight
        if hasattr(weight, "ds_id"):  # partitioned by DeepSpeed ZeRO-3: every process gathers it, keeps a copy
            import deepspeed  # optional: only under a DeepSpeed ZeRO-3 launch

            with deepspeed.zero.GatheredParameters([weight]):
                return weight.detach().clone()
        return weight.full_tensor() if hasattr(weight, "full_tensor") else weight  # gathered when sharded

    def shard(self, mesh) -> str:
        """Split the frozen weights over the processes of `mesh` (FSDP2 `fully_shard`); returns what was split.

        Each decoder layer is its own unit (gathered for its forward, freed after), and so is the input
        embedding when the output layer has its own weight; a tied embedding stays whole (the verbaliser reads
        rows of it directly). The fingerprint is taken first, from the whole weights. Initialising a prompt
        from a sharded embedding gathers it once (`input_embedding_matrix`).
        """
        from torch.distributed.fsdp import fully_shard  # only under an FSDP launch

        self.fingerprint()
        layers = self.decoder_layers()
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        embedding, output = self.model.get_input_embeddings(), self.model.get_output_embeddings()
        parts = [f"{len(layers)} decoder layers"]
        if output is None or output.weight is not embedding.weight:
            fully_shard(embedding, mesh=mesh)
            parts.append("the input embedding")
        return " and ".join(parts)

    def shard_zero3(self, zero_config: dict[str, Any] | None = None) -> str:
        """Partition the frozen weights over all processes with DeepSpeed ZeRO-3; returns what was split.

        The units are those of `shard`: each decoder layer, and the input embedding when the output layer has its
        own weight, gets DeepSpeed's ZeRO-3 hooks, which gather its weights for its forward (and again for the
        backward) and free them after; the rest (final norm, output layer, a tied embedding) stays whole.
        `zero_config` is the `zero_optimization` section of a DeepSpeed config (stage 3; the
        `stage3_param_persistence_threshold` etc. apply: weights smaller than the threshold stay whole). The
        fingerprint is taken first, from the whole weights. Needs `torch.distributed` initialised.
        """
        import deepspeed  # optional: only under a DeepSpeed ZeRO-3 launch
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig  # optional: only under a DeepSpeed ZeRO-3 launch
        from deepspeed.runtime.zero.parameter_offload import (
            DeepSpeedZeRoOffload,  # optional: only under a DeepSpeed ZeRO-3 launch
        )

        self.fingerprint()
        section = {**(zero_config or {}), "stage": 3, "memory_efficient_linear": False}  # F.linear left alone
        try:
            zero = DeepSpeedZeroConfig(**section)
        except Exception as err:  # pydantic's message names the bad key
            raise BackboneError(f"DeepSpeed zero_optimization config: {err}".splitlines()[0]) from err
        if zero.offload_param is not None and zero.offload_param.device != "none":
            raise BackboneError("DeepSpeed ZeRO-3 parameter offload is not supported for a frozen backbone yet: "
                                "set offload_param_device: none")
        if self.device.type == "cpu":
            _skip_shm_comm_build()
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
        layers = self.decoder_layers()
        units: list[nn.Module] = list(layers)
        embedding, output = self.model.get_input_embeddings(), self.model.get_output_embeddings()
        parts = [f"{len(layers)} decoder layers"]
        if output is None or output.weight is not embedding.weight:
            units.append(embedding)
            parts.append("the input embedding")
        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": section}
        self._zero3 = [DeepSpeedZeRoOffload(unit, timers=None, ds_config=config,
                                            prefetch_bucket_size=zero.prefetch_bucket_size,
                                            max_reuse_distance=zero.max_reuse_distance,
                                            max_live_parameters=zero.max_live_parameters,
                                            param_persistence_threshold=zero.param_persistence_threshold,
                                            model_persistence_threshold=zero.model_persistence_threshold)
                       for unit in units]
        params = [p for unit in units for p in unit.parameters()]
        held = sum(p.ds_numel if p.ds_persist else p.ds_tensor.numel() for p in params)
        return f"{' and '.join(parts)} (this process holds {held:,} of their {sum(p.ds_numel for p in params):,} weights)"

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor, past_key_values: Any = None,
                      use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        # base_model is the decoder without the LM head: vocabulary logits are computed by the caller only at
        # the positions that need them.
        body = self.model.base_model
        if self.attention_by_length:
            keys = attention_mask.shape[-1]  # the cached prefix and the new tokens
            sdpa = keys >= SDPA_FROM_KEYS or not torch.is_grad_enabled()
            self.model.config._attn_implementation = "sdpa" if sdpa else "eager"
        shift = None
        if (past_key_values is None and not use_cache and torch.is_grad_enabled() and self.attention_window is None
                and self.model.config._attn_implementation == "sdpa"):
            shift = _left_pads(attention_mask)
        if shift is not None:
            # Right-pad the rows: causal attention alone then keeps every real token from its row's pads, so SDPA
            # runs without a mask (is_causal) and skips the future's blocks -- half the score work of a long row.
            inputs_embeds, position_ids = _roll(inputs_embeds, shift), _roll(position_ids, shift)
            attention_mask = torch.ones_like(attention_mask)
        if self.attention_window is not None:
            attention_mask = self._windowed_masks(attention_mask, position_ids, inputs_embeds.dtype)
            if use_cache and past_key_values is None:
                past_key_values = self.new_cache()
        out = body(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                   position_ids=position_ids, cache=past_key_values, use_cache=use_cache)
        hidden = out.last_hidden_state if shift is None else _roll(out.last_hidden_state, -shift)
        return hidden, (out.cache if use_cache else None)

    @functools.cached_property
    def attends_by_position(self) -> bool:
        """Whether masked columns inside a row leave its hidden states as they are: true of rotary and learned
        positions and of windows applied by position; false where the model measures distances in columns (MPT's
        ALiBi, GPT-Neo's local layers). A cached prompt prefix, and a deep prompt, sit before each row's padding,
        so only a model that attends by position may use them. Found once, by running the same 8 tokens after 4
        masked columns (left padding, which every model takes) and with those columns after the second token:
        the same kernels on the same shapes, so the two agree to rounding where positions are what count.
        """
        with torch.no_grad():
            tokens = self.embed(torch.arange(3, 11, device=self.device)[None])              # (1, 8, d)
            mask = torch.ones(1, 12, dtype=torch.long, device=self.device)
            positions = torch.arange(8, device=self.device)[None]
            left_mask, gap_mask = mask.clone(), mask.clone()
            left_mask[:, :4], gap_mask[:, 2:6] = 0, 0
            left, _ = self.hidden_states(torch.cat([tokens[:, :4], tokens], 1), left_mask,
                                         torch.cat([positions[:, :1].expand(1, 4), positions], 1))
            gap, _ = self.hidden_states(torch.cat([tokens[:, :2], tokens[:, :4], tokens[:, 2:]], 1), gap_mask,
                                        torch.cat([positions[:, :2], positions[:, 1:2].expand(1, 4), positions[:, 2:]], 1))
        left, gap = left[0, 4:].float(), gap[0, [0, 1, *range(6, 12)]].float()
        tolerance = 1e-4 if self.dtype == torch.float32 else 1e-2
        return bool(((left - gap).abs().max() <= tolerance * left.abs().max().clamp(min=1)).item())

    def _pads_exactly(self) -> bool:
        """Whether 8 tokens after 4 masked columns (left padding) give the hidden states they give alone. An
        attention model's mask makes sure of it; a state-space or recurrent layer must mask padded inputs itself
        (Mamba's and Jamba's mixers and RecurrentGemma's recurrent blocks do)."""
        with torch.no_grad():
            tokens = self.embed(torch.arange(3, 11, device=self.device)[None])              # (1, 8, d)
            positions = torch.arange(8, device=self.device)[None]
            mask = torch.ones(1, 12, dtype=torch.long, device=self.device)
            mask[:, :4] = 0
            alone, _ = self.hidden_states(tokens, mask[:, 4:], positions)
            padded, _ = self.hidden_states(torch.cat([self.embed(torch.zeros_like(positions[:, :4])), tokens], 1),
                                           mask, torch.cat([positions[:, :4] * 0, positions], 1))
        alone, padded = alone[0].float(), padded[0, 4:].float()
        tolerance = 1e-4 if self.dtype == torch.float32 else 1e-2
        return bool(((alone - padded).abs().max() <= tolerance * alone.abs().max().clamp(min=1)).item())

    def _windowed_masks(self, attention_mask: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype):
        """The model's attention masks built from positions (`position_masks`): one per layer type when the model
        mixes full and sliding layers, else the sliding one."""
        full, sliding = position_masks(attention_mask, position_ids, self.attention_window, dtype)
        layer_types = getattr(self.model.config, "layer_types", None)
        if layer_types is None:
            return sliding
        return {kind: sliding if kind == "sliding_attention" else full for kind in set(layer_types)}

    def new_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Any:
        """A key/value cache, optionally holding `layers` [(keys, values) (B, H, C, hd) per layer]. Every layer
        keeps all its columns: a sliding-window layer's cache would drop columns by count, padding included, and
        the windows are applied by position instead (`position_masks`)."""
        from transformers import DynamicCache  # start-up time

        return DynamicCache(ddp_cache_data=layers) if layers is not None else DynamicCache()

    def kv_layout(self) -> tuple[int, int, int]:
        """(layers, key/value heads, head dim) of the attention cache: the shape of a deep prompt. Read from the
        cache of a one-token pass, so that multi-query and grouped heads (Falcon, GPT-BigCode) are what the model
        stores, whatever its config calls them."""
        keys, _ = self.keys_values(self.embed(torch.zeros(1, dtype=torch.long, device=self.device)))
        layers, _, heads, head_dim = keys.shape
        return int(layers), int(heads), int(head_dim)

    @torch.no_grad()
    def keys_values(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values every layer computes for a sequence of input vectors (n, d) at positions 0..n-1,
        as `[layers, n, kv_heads, head_dim]` fp32 each: real prefixes to start a deep prompt from."""
        embeds = inputs_embeds.to(self.device, self.dtype)[None]
        count = embeds.shape[1]
        mask = torch.ones(1, count, dtype=torch.long, device=self.device)
        _, cache = self.hidden_states(embeds, mask, torch.arange(count, device=self.device)[None], use_cache=True)
        keys = torch.stack([layer[0][0] for layer in cache]).transpose(1, 2)      # (L, n, h, hd)
        values = torch.stack([layer[1][0] for layer in cache]).transpose(1, 2)
        return keys.float(), values.float()

    def token_logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        head = self.model.get_output_embeddings()
        weight, bias = head.weight, getattr(head, "bias", None)
        if token_ids is not None:
            weight = weight[token_ids]
            bias = bias[token_ids] if bias is not None else None
        logits = F.linear(hidden.to(weight.dtype), weight, bias)
        return logits if self._logit_transform is None else self._logit_transform(logits)


def detect(config: Any) -> bool:
    """A decoder-only LM: its architecture ends in ForCausalLM / LMHeadModel (also the fallback kind)."""
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or ()))


def load(folder: str | Path, name: str, *, dtype: torch.dtype, device: torch.device | str,
         load_in: str | None = None) -> CausalLMBackbone:
    from transformers import AutoModelForCausalLM  # start-up time

    # On CPU, eager attention trains faster than SDPA's flash kernel at prompt-tuning lengths of a causal LM (its
    # backward dominates the step: benchmarks/studies/attention_impl.py); elsewhere keep the library default.
    extra = {"attn_implementation": "eager"} if torch.device(device).type == "cpu" else {}
    if torch.device(device).type == "cpu":
        # transformers warns once per state-space kernel it replaces with its PyTorch reference (mamba_ssm,
        # causal_conv1d): those kernels are CUDA-only, so on a CPU the warning names nothing to install.
        logging.getLogger("transformers.integrations.hub_kernels").setLevel(logging.ERROR)
    model, tokenizer = load_text_model(AutoModelForCausalLM, folder, name, BackboneKind.CAUSAL_LM.value, dtype=dtype,
                                       device=device, load_in=load_in, **extra)
    return CausalLMBackbone(model, tokenizer, name=name)
