"""Text generation with a soft prompt, reusing the key/value cache between steps.

The cached path runs through the mixed-batch engine (`inference.batch`): the prompt enters through the first
forward pass (or its cached prefix) and later steps feed one new token per row. `use_cache=False` recomputes
the whole sequence every step without any cache: slower, and the reference the cached path is tested against.
"""

from __future__ import annotations

import random
from typing import Mapping, Sequence

import torch

from ..protocols import JoinsMixedBatches
from ..template import left_pad
from .batch import Decoding, Request, advance_decoding, fields_of, pick_token, run_batch


@torch.no_grad()
def generate(model: JoinsMixedBatches, examples: Sequence[Mapping[str, str]], *, max_new_tokens: int = 32,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, stop: Sequence[str] = (),
             seed: int | None = None, use_cache: bool = True) -> list[str]:
    """Continue each example's rendered template; returns the generated text per example (stop strings cut).
    With `do_sample` and a `seed`, every row samples from its own generator seeded with `seed`, so a row's
    text does not depend on the rest of the batch.

    Examples:
        >>> generate(model, [{"text": "Translate: cat"}], max_new_tokens=8, stop=["\\n"])   # doctest: +SKIP
        ['chat']
    """
    temperature = temperature if do_sample else 0.0
    requests = [Request(model, ex, "generate", max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, stop=tuple(stop), seed=seed) for ex in examples]
    if use_cache:
        return [result.text for result in run_batch(model.backbone, requests)]
    return [_generate_without_cache(model, req) for req in requests]


def _generate_without_cache(model: JoinsMixedBatches, req: Request) -> str:
    """The reference: one row, the whole sequence recomputed every step, no key/value or prompt cache."""
    backbone = model.backbone
    seed = req.seed if req.seed is not None else random.getrandbits(63)
    state = Decoding(req, 0, torch.Generator().manual_seed(seed))
    encoded = model.encoder.encode(fields_of(model, req.inputs))   # the context alone, for any task
    batch = {k: v.to(backbone.device) for k, v in left_pad([encoded], model.encoder.pad_id).items()}
    batch["labels"] = torch.full_like(batch["input_ids"], -100)  # generated tokens are the answer, as in training
    while state.finish is None and req.max_new_tokens > 0:
        hidden, _ = _full_pass(model, batch)
        logits = backbone.token_logits(hidden[:, -1]).float().cpu()[0]
        token = pick_token(logits, req.temperature, req.top_p, state.generator)
        advance_decoding(state, token, backbone.tokenizer, backbone.tokenizer.eos_token_id)
        one = torch.ones((1, 1), dtype=torch.long, device=backbone.device)
        batch = {"input_ids": torch.cat([batch["input_ids"], one * token], dim=1),
                 "soft_index": torch.cat([batch["soft_index"], -one], dim=1),
                 "attention_mask": torch.cat([batch["attention_mask"], one], dim=1),
                 "position_ids": torch.cat([batch["position_ids"], batch["position_ids"][:, -1:] + 1], dim=1),
                 "labels": torch.cat([batch["labels"], one * token], dim=1)}
    return state.text


def _full_pass(model: JoinsMixedBatches, batch):
    """The whole sequence, without the cached prompt prefix (a deep prompt's prefixes still apply)."""
    prior, model.use_prompt_cache = model.use_prompt_cache, False
    try:
        return model.hidden(batch)
    finally:
        model.use_prompt_cache = prior
