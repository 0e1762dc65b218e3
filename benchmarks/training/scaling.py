"""How the cost of a training step grows: with prompt length, with sequence length, with backbone size.

Median step time (forward + backward + optimiser, warm-up excluded) at batch 16 on rotten_tomatoes / bbc_news
text cut to an exact token length, for prefix placement and for suffix placement (whose input columns run once
without gradients), up to 1,024 text tokens, with the peak memory each step adds (RSS sampled every 5 ms).
Steps run as training runs them by default: the decoder block compiled (`--eager`: not), and a batch of more
than `--pass-tokens` padded tokens split into passes of fewer rows (`--pass-tokens 0`: one pass).
Writes benchmarks/training/results/scaling.json, scaling.md and scaling.png.

    python benchmarks/training/scaling.py [--quick]

Takes ~15 min on 2 CPU cores.
"""

from __future__ import annotations

import sys

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import softprompt as sp
from softprompt.training.loop import batch_passes
sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py, the shared helpers
from common import base_rss_mb, PeakRSS  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def rows_of_length(tokenizer, texts, length, count):
    """`count` rows whose text is exactly `length` tokens (long articles cut, short ones joined)."""
    ids = tokenizer(" ".join(texts), add_special_tokens=False).input_ids
    return [{"text": tokenizer.decode(ids[i * length:(i + 1) * length]), "label": "business"} for i in range(count)]


def median_step(model, rows, steps, warmup=1, memory: list | None = None, pass_tokens: int = 0) -> float:
    """Median seconds of a step; with `memory`, the highest RSS above the start seen during the steps is appended."""
    optimizer = torch.optim.AdamW(model.prompt.parameters(), lr=1e-3)
    passes = batch_passes(model, rows, model.make_batch(rows), pass_tokens, "label")
    times = []
    with PeakRSS(base_rss_mb()) as peak:
        for i in range(steps + warmup):
            started = time.perf_counter()
            for batch, weight in passes:
                loss, _ = model.loss(batch)
                (loss * weight).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= warmup:
                times.append(time.perf_counter() - started)
    if memory is not None:
        memory.append(peak.mb)
    return statistics.median(times)


def build(backbone, task, placement, tokens, max_length):
    config = sp.TrainConfig(data="bbc_news", output="/tmp/unused", num_virtual_tokens=tokens, placement=placement,
                            max_length=max_length, init="vocab")
    model = sp.build_prompted_model(config, backbone, task)
    model.train()
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer points and steps (a smoke run)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eager", action="store_true", help="do not compile the decoder block")
    parser.add_argument("--pass-tokens", type=int, default=sp.TrainConfig.__dataclass_fields__["pass_tokens"].default)
    parser.add_argument("--parts", default="backbone,prompt,sequence",
                        help="which tables to measure (the others are kept from the last results/scaling.json)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    steps = 2 if args.quick else 4
    prompt_lengths = (1, 20, 100) if args.quick else (1, 5, 20, 100, 150)
    seq_lengths = (32, 128) if args.quick else (32, 64, 128, 256, 512, 1024)
    backbones = ("smollm2-135m",) if args.quick else ("smollm2-135m", "gemma3-270m")
    task = sp.load_task("bbc_news")
    texts = [r["text"] for r in task.train[:400]]
    results = {"prompt_length": [], "sequence_length": [], "backbone": [], "batch_size": args.batch_size,
               "compiled": not args.eager, "pass_tokens": args.pass_tokens,
               "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    previous = RESULTS / "scaling.json"
    if parts != {"backbone", "prompt", "sequence"} and previous.exists():  # keep the tables not measured now
        kept = json.loads(previous.read_text())
        for part, key in (("backbone", "backbone"), ("prompt", "prompt_length"), ("sequence", "sequence_length")):
            if part not in parts:
                results[key] = kept[key]
        if "backbone" not in parts:
            backbones = tuple(dict.fromkeys(r["backbone"] for r in kept["backbone"]))
    for name in backbones if "backbone" in parts else ("smollm2-135m",):
        backbone = sp.load_backbone(name, dtype="auto")
        if not args.eager:
            print(backbone.compile_for_training(), flush=True)
        base_rows = rows_of_length(backbone.tokenizer, texts, 64, args.batch_size)
        for placement in ("prefix", "suffix") if "backbone" in parts else ():
            seconds = median_step(build(backbone, task, placement, 20, 64 + 40), base_rows, steps)
            results["backbone"].append({"backbone": name, "placement": placement, "seconds": seconds,
                                        "parameters": sum(p.numel() for p in backbone.model.parameters())})
            print("backbone", name, placement, f"{seconds:.3f}", flush=True)
        if name != "smollm2-135m":
            continue
        for placement in ("prefix", "suffix"):
            for n in prompt_lengths if "prompt" in parts else ():
                seconds = median_step(build(backbone, task, placement, n, 64 + n + 20), base_rows, steps)
                results["prompt_length"].append({"placement": placement, "tokens": n, "seconds": seconds})
                print("prompt", placement, n, f"{seconds:.3f}", flush=True)
            for length in seq_lengths if "sequence" in parts else ():
                rows = rows_of_length(backbone.tokenizer, texts, length, args.batch_size)
                memory: list = []
                seconds = median_step(build(backbone, task, placement, 20, length + 40), rows, steps, memory=memory,
                                      pass_tokens=args.pass_tokens)
                results["sequence_length"].append({"placement": placement, "text_tokens": length, "seconds": seconds,
                                                   "peak_extra_mb": memory[0]})
                print("sequence", placement, length, f"{seconds:.3f}", f"{memory[0]:.0f} MB", flush=True)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(results, indent=1))
    lines = [f"Median training-step seconds, batch {args.batch_size}, {results['threads']} threads, decoder block "
             f"{'compiled' if not args.eager else 'eager'}, passes of at most {args.pass_tokens} padded tokens "
             f"(sequence table).", "",
             "| prompt tokens | prefix | suffix |", "|---|---|---|"]
    for n in prompt_lengths:
        row = {r["placement"]: r["seconds"] for r in results["prompt_length"] if r["tokens"] == n}
        lines.append(f"| {n} | {row.get('prefix', float('nan')):.3f} | {row.get('suffix', float('nan')):.3f} |")
    lines += ["", "| text tokens | prefix s | suffix s | prefix / 128 tokens | tokens / 128 | prefix peak MB | "
                  "suffix peak MB |", "|---|---|---|---|---|---|---|"]
    base = {r["placement"]: r["seconds"] for r in results["sequence_length"] if r["text_tokens"] == 128}
    for length in seq_lengths:
        row = {r["placement"]: r for r in results["sequence_length"] if r["text_tokens"] == length}
        prefix, suffix = row.get("prefix", {}), row.get("suffix", {})
        growth = prefix.get("seconds", float("nan")) / base.get("prefix", float("nan"))
        lines.append(f"| {length} | {prefix.get('seconds', float('nan')):.3f} | {suffix.get('seconds', float('nan')):.3f} "
                     f"| {growth:.2f}x | {length / 128:.2f}x | {prefix.get('peak_extra_mb', float('nan')):.0f} | "
                     f"{suffix.get('peak_extra_mb', float('nan')):.0f} |")
    lines += ["", "| backbone | parameters | prefix | suffix |", "|---|---|---|---|"]
    for name in backbones:
        row = {r["placement"]: r for r in results["backbone"] if r["backbone"] == name}
        lines.append(f"| {name} | {row['prefix']['parameters'] / 1e6:.0f}M | {row['prefix']['seconds']:.3f} | "
                     f"{row['suffix']['seconds']:.3f} |")
    (RESULTS / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for placement, style in (("prefix", "o-"), ("suffix", "s--")):
        pts = [r for r in results["prompt_length"] if r["placement"] == placement]
        axes[0].plot([r["tokens"] for r in pts], [r["seconds"] for r in pts], style, label=placement)
        pts = [r for r in results["sequence_length"] if r["placement"] == placement]
        axes[1].plot([r["text_tokens"] for r in pts], [r["seconds"] for r in pts], style, label=placement)
        pts = [r for r in results["backbone"] if r["placement"] == placement]
        axes[2].plot([r["parameters"] / 1e6 for r in pts], [r["seconds"] for r in pts], style, label=placement)
    axes[0].set(xlabel="virtual tokens", ylabel="s / step", title="prompt length (64 text tokens)")
    axes[1].set(xlabel="text tokens", ylabel="s / step", title="sequence length (20 virtual tokens)")
    axes[2].set(xlabel="backbone parameters (M)", ylabel="s / step", title="backbone size")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=110)


if __name__ == "__main__":
    main()
