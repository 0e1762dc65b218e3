"""Tiny random-weight causal LMs of many transformers architectures, built in-process from a config (no downloads),
for the architecture matrix (tests/kinds/test_architectures.py).

Each entry names the features it stands for; `SHARED` shrinks every config to a few thousand weights (names a
config does not have are ignored), and an entry's own settings add what makes the architecture itself (a small
sliding window, experts, soft-capping, ...). Windows are small so that the test's long inputs exceed them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

SHARED: dict[str, Any] = dict(
    vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    initializer_range=0.2, tie_word_embeddings=False,
    # GPT-2 / GPT-J / BLOOM / MPT / OPT style names
    n_embd=32, n_layer=2, n_head=4, n_positions=512, n_inner=64, d_model=32, n_layers=2, n_heads=4,
    num_layers=2, num_heads=4, ffn_dim=64, word_embed_proj_dim=32,
)


@dataclass(frozen=True)
class Architecture:
    name: str              # transformers model type
    features: str          # what it stands for in the matrix
    settings: dict[str, Any] = field(default_factory=dict)
    keys_values: bool = True  # False: layers without keys/values (state-space, recurrent): rows run whole


WINDOW = 6  # sliding windows of the windowed entries, in positions

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("llama", "rotary, grouped-query heads"),
    Architecture("gpt2", "learned absolute positions, fused qkv"),
    Architecture("gpt_neo", "learned positions, alternating local attention", {"attention_types": [[["global", "local"], 1]],
                                                                                 "num_layers": 2, "window_size": WINDOW}),
    Architecture("gpt_neox", "parallel attention + MLP, partial rotary", {"rotary_pct": 0.5}),
    Architecture("gptj", "parallel block, rotary on part of each head", {"rotary_dim": 4}),
    Architecture("codegen", "parallel block, fused qkv", {"rotary_dim": 4}),
    Architecture("gpt_bigcode", "multi-query attention, learned positions", {"multi_query": True}),
    Architecture("bloom", "ALiBi positions"),
    Architecture("mpt", "ALiBi positions, no biases", {"attn_config": {"alibi": True}}),
    Architecture("falcon", "multi-query, parallel block", {"multi_query": True, "parallel_attn": True,
                                                           "new_decoder_architecture": False, "vocab_size": 400,
                                                           "hidden_size": 32, "num_hidden_layers": 2,
                                                           "num_attention_heads": 4}),
    Architecture("opt", "learned positions with an offset"),
    Architecture("mistral", "sliding-window attention", {"sliding_window": WINDOW}),
    Architecture("mixtral", "mixture of experts, sliding window", {"sliding_window": WINDOW, "num_local_experts": 4,
                                                                   "num_experts_per_tok": 2}),
    Architecture("qwen2", "biased q/k/v, grouped-query"),
    Architecture("qwen2_moe", "mixture of experts with a shared expert", {"num_experts": 4, "num_experts_per_tok": 2,
                                                                         "moe_intermediate_size": 16,
                                                                         "shared_expert_intermediate_size": 16}),
    Architecture("qwen3", "q/k norms"),
    Architecture("gemma", "scaled embeddings, tied head", {"tie_word_embeddings": True}),
    Architecture("gemma2", "attention and final logit soft-capping, alternating sliding window",
                 {"sliding_window": WINDOW, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                  "tie_word_embeddings": True}),
    Architecture("gemma3_text", "hybrid sliding/full layers, two rotary bases",
                 {"sliding_window": WINDOW, "num_hidden_layers": 3, "tie_word_embeddings": True,
                  "layer_types": ["sliding_attention", "sliding_attention", "full_attention"]}),
    Architecture("phi", "partial rotary, parallel block", {"partial_rotary_factor": 0.5}),
    Architecture("phi3", "fused qkv and gate/up, sliding window", {"sliding_window": WINDOW}),
    Architecture("starcoder2", "sliding window, biased MLP", {"sliding_window": WINDOW}),
    Architecture("cohere", "parallel block, logit scale", {"logit_scale": 0.5}),
    Architecture("stablelm", "partial rotary, layer norm", {"partial_rotary_factor": 0.5}),
    Architecture("olmo2", "post-norm blocks, q/k norms"),
    Architecture("granite", "embedding, residual and logit multipliers",
                 {"embedding_multiplier": 2.0, "residual_multiplier": 0.5, "logits_scaling": 2.0}),
    Architecture("mamba", "state-space model (no attention)", {"state_size": 4, "expand": 2, "conv_kernel": 3},
                 keys_values=False),
    Architecture("jamba", "hybrid state-space + attention, mixture of experts",
                 {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
                  "num_experts": 2, "num_experts_per_tok": 1, "mamba_d_state": 4, "mamba_expand": 2,
                  "mamba_dt_rank": 4}, keys_values=False),
    Architecture("recurrent_gemma", "hybrid recurrent + local attention",
                 {"block_types": ["recurrent", "attention"], "attention_window_size": WINDOW, "lru_width": 32,
                  "num_hidden_layers": 2}, keys_values=False),
)


def tiny_config(arch: Architecture):
    from transformers import AutoConfig

    config = AutoConfig.for_model(arch.name, **arch.settings)
    for key, value in SHARED.items():
        if key in arch.settings or not hasattr(config, key) or isinstance(getattr(type(config), key, None), property):
            continue  # the entry's own value, a name this config lacks, or one derived from others (Falcon's head_dim)
        setattr(config, key, value)
    return config


def tiny_causal_lm(arch: Architecture, seed: int = 0, attn_implementation: str = "eager") -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch)
    config._attn_implementation = attn_implementation
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_arch_backbone(arch: Architecture, seed: int = 0):
    from tiny import tiny_tokenizer

    from softprompt.kinds.causal_lm.backbone import CausalLMBackbone

    return CausalLMBackbone(tiny_causal_lm(arch, seed), tiny_tokenizer(), name=f"tiny-{arch.name}")
