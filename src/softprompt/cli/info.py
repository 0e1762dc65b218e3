"""`softprompt info`: what a prompt file holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..formats import read_prompt_tensors
from . import app


@app.command()
def info(
    prompt: Annotated[Path, typer.Argument(help="Prompt file (.safetensors).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole metadata as JSON.")] = False,
) -> None:
    """Metadata, size and backbone fingerprint of a prompt file."""
    tensors, meta = read_prompt_tensors(prompt)
    size = prompt.stat().st_size
    main = next(iter(tensors.values()))                      # prompt_embeddings [n, d] or prefix_keys [L, n, h, hd]
    norms = main.flatten(-2).norm(dim=-1) if main.dim() == 4 else main.norm(dim=-1)
    summary = {"file": str(prompt), "bytes": size, "shape": list(main.shape),
               "norm_mean": round(float(norms.mean()), 4), **meta}
    if as_json:
        print(json.dumps(summary, indent=1))
        return
    backbone, training = meta.get("backbone", {}), meta.get("training") or {}
    lines = [
        f"file          {prompt}  ({size / 1024:.1f} KB)",
        (f"prompt        {main.shape[0]} virtual tokens x {main.shape[1]}  (mean norm {norms.mean():.3f})"
         if main.dim() == 2 else
         f"prompt        deep: {main.shape[1]} virtual tokens x {main.shape[0]} layers x {main.shape[2]} kv heads x "
         f"{main.shape[3]}, keys and values  (mean key norm {norms.mean():.3f})"),
        f"backbone      {backbone.get('name')}  ({backbone.get('kind')}, hidden size {backbone.get('hidden_size')})",
        f"fingerprint   {backbone.get('fingerprint')}",
        f"template      {meta.get('template')!r}",
        f"task          {meta.get('task')}",
    ]
    if "text_offset_a" in tensors:  # DePT
        positions, rank = tensors["text_offset_a"].shape
        lines.insert(2, f"text offset   DePT low-rank A·B: {positions} positions x rank {rank} x {main.shape[1]}  "
                        f"(mean offset norm {(tensors['text_offset_a'] @ tensors['text_offset_b']).norm(dim=-1).mean():.3f})")
    if meta.get("verbalizer"):
        lines.append("verbalizer    " + ", ".join(f"{k}={'/'.join(v)}" for k, v in meta["verbalizer"].items()))
    lines.append(f"init          {meta.get('init')}")
    if training:
        val = training.get("validation") or {}
        shown = {k: v for k, v in val.items() if k in ("accuracy", "macro_f1", "loss", "n")}
        lines.append(f"training      best step {training.get('best_step')} of {training.get('steps')}, "
                     f"{training.get('train_seconds')} s, validation {shown}")
    lines.append(f"softprompt    {meta.get('softprompt_version')} (format {meta.get('format_version')})")
    print("\n".join(lines))
