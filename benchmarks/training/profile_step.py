"""Where a default training step spends its time: torch.profiler table of one step (bf16, prefix, batch 16).

The default step compiles the decoder block (`--compile auto` in a run of 100+ steps); `--eager` profiles the
step with `--compile off`. `--text-tokens N` profiles a step of 16 bbc_news rows of exactly N text tokens
instead (scaling.py's long rows), run as training runs it: in passes of at most `--pass-tokens` padded tokens.
Writes benchmarks/training/results/profile_step[_eager][_N].txt.

    python benchmarks/training/profile_step.py [--eager] [--text-tokens 1024]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import softprompt as sp
from softprompt.training.loop import batch_passes

from scaling import build, rows_of_length  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eager", action="store_true", help="profile the step with --compile off")
    parser.add_argument("--text-tokens", type=int, default=None, help="16 bbc_news rows of exactly this length")
    parser.add_argument("--pass-tokens", type=int, default=sp.TrainConfig.__dataclass_fields__["pass_tokens"].default)
    args = parser.parse_args()
    backbone = sp.load_backbone("smollm2-135m")
    if not args.eager:
        print(backbone.compile_for_training(), flush=True)
    if args.text_tokens:
        task = sp.load_task("bbc_news")
        rows = rows_of_length(backbone.tokenizer, [r["text"] for r in task.train[:400]], args.text_tokens, 16)
        model = build(backbone, task, "prefix", 20, args.text_tokens + 40)
        passes = batch_passes(model, rows, model.make_batch(rows), args.pass_tokens, "label")
    else:
        task = sp.load_task("rotten_tomatoes")
        config = sp.TrainConfig(data="rotten_tomatoes", output="/tmp/unused", max_length=84)
        model = sp.build_prompted_model(config, backbone, task)
        model.train()
        order = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(0)).tolist()
        passes = [(model.make_batch([task.train[i] for i in order[:16]]), 1.0)]

    def step():
        for batch, weight in passes:
            loss, _ = model.loss(batch)
            (loss * weight).backward()
        model.prompt.embeddings.grad = None

    for _ in range(2):
        step()
    times = []
    for _ in range(2 if args.text_tokens else 4):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    shapes = " + ".join(str(tuple(batch["input_ids"].shape)) for batch, _ in passes)
    text = (f"batch {shapes}, median step {statistics.median(times):.3f} s, "
            f"{'eager' if args.eager else 'decoder block compiled'}\n\n{table}\n")
    RESULTS.mkdir(exist_ok=True)
    name = "profile_step" + ("_eager" if args.eager else "") + (f"_{args.text_tokens}" if args.text_tokens else "")
    (RESULTS / f"{name}.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
