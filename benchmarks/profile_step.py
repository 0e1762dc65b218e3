"""Where a default training step spends its time: torch.profiler table of one step (bf16, prefix, batch 16).

The default step compiles the decoder block (`--compile auto` in a run of 100+ steps); `--eager` profiles the
step with `--compile off`. Writes benchmarks/results/profile_step.txt (or profile_step_eager.txt).

    python benchmarks/profile_step.py [--eager]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import softprompt as sp

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eager", action="store_true", help="profile the step with --compile off")
    args = parser.parse_args()
    task = sp.load_task("rotten_tomatoes")
    backbone = sp.load_backbone("smollm2-135m")
    if not args.eager:
        print(backbone.compile_for_training(), flush=True)
    config = sp.TrainConfig(data="rotten_tomatoes", output="/tmp/unused", max_length=84)
    model = sp.build_prompted_model(config, backbone, task)
    model.train()
    order = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(0)).tolist()
    batch = model.make_batch([task.train[i] for i in order[:16]])

    def step():
        loss, _ = model.loss(batch)
        loss.backward()
        model.prompt.embeddings.grad = None

    for _ in range(2):
        step()
    times = []
    for _ in range(4):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    text = (f"batch {tuple(batch['input_ids'].shape)}, median step {statistics.median(times):.3f} s, "
            f"{'eager' if args.eager else 'decoder block compiled'}\n\n{table}\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("profile_step_eager.txt" if args.eager else "profile_step.txt")).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
