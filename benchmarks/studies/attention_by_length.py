"""Training-step time and peak memory of eager vs SDPA attention by sequence length, on CPU.

Eager attention wins at prompt-tuning's usual lengths (`attention_impl.py`), but it materialises the T x T scores
of every layer for the backward pass, so a long input falls off a cliff. This measures where SDPA overtakes it:
smollm2-135m, bf16 autocast, a 20-token prefix prompt, `--batch-size` rows of real reviews repeated to each
length, forward + backward, both implementations in one process, interleaved; median of `--steps` timed steps
after one warm-up, and the peak resident memory above the RSS before the first step (sampled every 5 ms). Writes
benchmarks/studies/results/attention_by_length.{json,md}.

    python benchmarks/studies/attention_by_length.py [--lengths 64,128,256,512,1024] [--batch-size 4] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import softprompt as sp
from softprompt.hub import builtin_backbone_dir
from softprompt.kinds.causal_lm.backbone import CausalLMBackbone
sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py, the shared helpers
from common import base_rss_mb, PeakRSS  # noqa: E402


RESULTS = Path(__file__).parent / "results"


def timed_step(model, batch, base: float) -> tuple[float, float]:
    """Seconds of one forward + backward, and the highest RSS above `base` while it ran (MB)."""
    with PeakRSS(base) as peak:
        started = time.perf_counter()
        loss, _ = model.loss(batch)
        loss.backward()
        seconds = time.perf_counter() - started
    model.prompt.embeddings.grad = None
    return seconds, peak.mb


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="64,128,256,512,1024")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    folder = builtin_backbone_dir("smollm2-135m")
    task = sp.load_task("rotten_tomatoes")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    words = " ".join(row["text"] for row in task.train[:400]).split()
    rows = []
    for length in [int(n) for n in args.lengths.split(",")]:
        for impl in ("eager", "sdpa"):
            backbone = CausalLMBackbone(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                        attn_implementation=impl), tokenizer, "smollm2-135m")
            backbone.attention_by_length = False  # this benchmark fixes the implementation
            config = sp.TrainConfig(data="rotten_tomatoes", output="/tmp/unused", max_length=length + 8)
            model = sp.build_prompted_model(config, backbone, task)
            texts = []
            for r in range(args.batch_size):  # each row exactly `length` text tokens
                ids = tokenizer(" ".join(words[r * 50:]), add_special_tokens=False).input_ids[:length]
                texts.append({"text": tokenizer.decode(ids), "label": "positive"})
            batch = model.make_batch(texts)
            base = base_rss_mb()  # before any step: what the steps need, warm-up included
            timed_step(model, batch, base)  # warm-up
            results = [timed_step(model, batch, base) for _ in range(args.steps)]
            row = {"text_tokens": length, "attention": impl, "sequence": int(batch["input_ids"].shape[1]),
                   "median_step_seconds": statistics.median(s for s, _ in results),
                   "peak_extra_mb": max(m for _, m in results)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model, backbone
    RESULTS.mkdir(exist_ok=True)
    out = {"batch_size": args.batch_size, "threads": torch.get_num_threads(), "rows": rows}
    (RESULTS / "attention_by_length.json").write_text(json.dumps(out, indent=1))
    lines = [f"smollm2-135m, bf16, 20-token prefix, batch {args.batch_size}, {torch.get_num_threads()} threads: "
             "median forward + backward seconds and peak added memory", "",
             "| text tokens | eager s | SDPA s | SDPA / eager | eager peak MB | SDPA peak MB |", "|---|---|---|---|---|---|"]
    for length in sorted({r["text_tokens"] for r in rows}):
        e, s = (next(r for r in rows if r["text_tokens"] == length and r["attention"] == a) for a in ("eager", "sdpa"))
        lines.append(f"| {length} | {e['median_step_seconds']:.2f} | {s['median_step_seconds']:.2f} | "
                     f"{s['median_step_seconds'] / e['median_step_seconds']:.2f} | {e['peak_extra_mb']:.0f} | "
                     f"{s['peak_extra_mb']:.0f} |")
    (RESULTS / "attention_by_length.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
