"""Training-step time of the frozen backbone with eager vs SDPA attention on CPU (why CPU loads use eager).

Same batch (16 Rotten Tomatoes reviews, 20-token prefix prompt), bf16 autocast, median of N timed steps after
warm-up, both implementations in one process, interleaved. Writes benchmarks/studies/results/attention_impl.json/.md.

    python benchmarks/studies/attention_impl.py [--steps 8]

Takes ~2 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import softprompt as sp
from softprompt.hub import builtin_backbone_dir
from softprompt.kinds.causal_lm.backbone import CausalLMBackbone

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    folder = builtin_backbone_dir("smollm2-135m")
    task = sp.load_task("rotten_tomatoes")
    config = sp.TrainConfig(data="rotten_tomatoes", output="/tmp/unused")
    models = {}
    for impl in ("eager", "sdpa"):
        backbone = CausalLMBackbone(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                    attn_implementation=impl), AutoTokenizer.from_pretrained(folder), "smollm2-135m")
        models[impl] = sp.build_prompted_model(config, backbone, task)
    batch = models["eager"].make_batch(task.train[: args.batch_size])
    times = {impl: [] for impl in models}
    for step in range(args.steps + 2):
        for impl, model in models.items():
            started = time.perf_counter()
            loss, _ = model.loss(batch)
            loss.backward()
            model.prompt.embeddings.grad = None
            if step >= 2:  # warm-up excluded
                times[impl].append(time.perf_counter() - started)
    medians = {impl: statistics.median(t) for impl, t in times.items()}
    result = {"batch_shape": list(batch["input_ids"].shape), "threads": torch.get_num_threads(),
              "median_step_seconds": medians, "sdpa_over_eager": medians["sdpa"] / medians["eager"], "raw": times}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attention_impl.json").write_text(json.dumps(result, indent=1))
    table = ("| attention | median step (s) |\n|---|---|\n" +
             "".join(f"| {k} | {v:.3f} |\n" for k, v in medians.items()) +
             f"\nSDPA / eager: {result['sdpa_over_eager']:.2f}x (batch {result['batch_shape']}, bf16 autocast)\n")
    (RESULTS / "attention_impl.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
