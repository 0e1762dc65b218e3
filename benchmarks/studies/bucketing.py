"""Length-bucketed vs plain shuffled batches on rotten_tomatoes: padded tokens per step and step time.

Uses the trainer's own batch stream (`softprompt.training.checkpoint.BatchStream`) with the same seed both ways;
times forward + backward on the same number of batches, interleaved. Writes results/bucketing.json/.md.

    python benchmarks/studies/bucketing.py [--batches 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import softprompt as sp
from softprompt.training.checkpoint import BatchStream as _batches

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    task = sp.load_task("rotten_tomatoes")
    backbone = sp.load_backbone("smollm2-135m")
    model = sp.build_prompted_model(sp.TrainConfig(data="rotten_tomatoes", output="/tmp/unused"), backbone, task)
    model.train()
    lengths = [len(r["text"]) for r in task.train]
    per_epoch = -(-len(lengths) // 16)
    streams = {"bucketed": _batches(lengths, 16, 0, True), "plain": _batches(lengths, 16, 0, False)}
    epoch = {name: [next(stream) for _ in range(per_epoch)] for name, stream in streams.items()}
    tokens = {name: statistics.mean(model.make_batch([task.train[i] for i in b])["input_ids"].numel()
                                    for b in batches) for name, batches in epoch.items()}
    times = {name: [] for name in epoch}
    for i in range(args.batches):
        for name, batches in epoch.items():
            batch = model.make_batch([task.train[j] for j in batches[i]])
            started = time.perf_counter()
            loss, _ = model.loss(batch)
            loss.backward()
            model.prompt.embeddings.grad = None
            times[name].append(time.perf_counter() - started)
    result = {"mean_padded_tokens_per_batch": tokens,
              "median_step_seconds": {k: statistics.median(v[1:]) for k, v in times.items()},
              "batches_timed": args.batches - 1}
    result["token_ratio"] = tokens["plain"] / tokens["bucketed"]
    result["time_ratio"] = result["median_step_seconds"]["plain"] / result["median_step_seconds"]["bucketed"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bucketing.json").write_text(json.dumps(result, indent=1))
    table = ("| batches | padded tokens / batch (whole epoch) | median step s |\n|---|---|---|\n" +
             "".join(f"| {k} | {tokens[k]:.0f} | {result['median_step_seconds'][k]:.3f} |\n" for k in tokens) +
             f"\nplain / bucketed: {result['token_ratio']:.2f}x tokens, {result['time_ratio']:.2f}x step time\n")
    (RESULTS / "bucketing.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
