"""Text generation with a soft prompt, reusing the key/value cache between steps.

The prompt enters only through the first forward pass (the cache then holds it); later steps feed one new
token per row. `use_cache=False` recomputes the whole sequence each step: slower, and the reference the cached
path is tested against.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..model import PromptedModel


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
          generator: torch.Generator | None) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # always keeps the most likely token
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: PromptedModel, examples: Sequence[Mapping[str, str]], *, max_new_tokens: int = 32,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, stop: Sequence[str] = (),
             seed: int | None = None, use_cache: bool = True) -> list[str]:
    """Continue each example's rendered template; returns the generated text per example (stop strings cut).

    >>> generate(model, [{"text": "Translate: cat"}], max_new_tokens=8, stop=["\\n"])   # doctest: +SKIP
    ['chat']
    """
    device = model.backbone.device
    tokenizer = model.backbone.tokenizer
    eos = tokenizer.eos_token_id
    generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    batch = {k: v.to(device) for k, v in model.make_batch(examples, label_field=None).items()}
    rows = batch["input_ids"].shape[0]
    generated: list[list[int]] = [[] for _ in range(rows)]
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    if use_cache:
        hidden, cache, mask = model.prefill(batch)                       # (B, T', d); mask matches the cache
        batch = {**batch, "attention_mask": mask}
    else:
        hidden, cache = model.hidden(batch)
    for _ in range(max_new_tokens):
        logits = model.backbone.token_logits(hidden[:, -1]).float()      # (B, V)
        next_ids = _pick(logits.cpu(), do_sample, temperature, top_p, generator).to(device)
        next_ids = torch.where(done, torch.full_like(next_ids, model.encoder.pad_id), next_ids)
        for row in range(rows):
            if done[row]:
                continue
            token = int(next_ids[row])
            if token == eos:
                done[row] = True
                continue
            generated[row].append(token)
            if stop and any(s in tokenizer.decode(generated[row]) for s in stop):
                done[row] = True
        if bool(done.all()):
            break
        ones = torch.ones((rows, 1), dtype=batch["attention_mask"].dtype, device=device)
        step = {"input_ids": next_ids[:, None], "soft_index": torch.full_like(next_ids[:, None], -1),
                "attention_mask": torch.cat([batch["attention_mask"], ones], dim=1),
                "position_ids": batch["position_ids"][:, -1:] + 1}
        if use_cache:
            hidden, cache = model.hidden(step, past_key_values=cache, use_cache=True)
            batch = {**batch, "attention_mask": step["attention_mask"], "position_ids": step["position_ids"]}
        else:
            batch = {"input_ids": torch.cat([batch["input_ids"], step["input_ids"]], dim=1),
                     "soft_index": torch.cat([batch["soft_index"], step["soft_index"]], dim=1),
                     "attention_mask": step["attention_mask"],
                     "position_ids": torch.cat([batch["position_ids"], step["position_ids"]], dim=1)}
            hidden, _ = model.hidden(batch)
    texts = []
    for ids in generated:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        for s in stop:
            if s in text:
                text = text[: text.index(s)]
        texts.append(text)
    return texts
