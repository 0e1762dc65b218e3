"""What each serving lever buys, in process (no HTTP, no queueing): rows/s of mixed-prompt classification batches
(`run_batch`, the eight prompts of serve_load.py) with each lever off and on, one fresh process per setting,
settings alternated over several rounds (medians).

Levers: attention kernel without gradients (eager vs SDPA), the vocabulary projection of classification rows (one
matmul per row vs one for the batch), and the allocator (glibc defaults vs `softprompt.cpu.keep_freed_memory`).
Also reports the compute ceiling: FLOPs per row counted from the backbone's shapes (2 x multiply-adds of every
linear layer per token run, attention scores and weighted values over the attended columns, one vocabulary
projection per row) against the measured bf16 matmul rate. Writes results/serve_levers.json and .md.

    python benchmarks/serving/serve_levers.py [--rounds 3] [--words 25,75] [--rows 32]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from serve_load import MODEL, RESULTS, batch_seconds, make_prompts, row_flops, texts_for
sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py, the shared helpers
from common import matmul_gflops  # noqa: E402

SETTINGS = {  # name -> (attention, head, allocator)
    "before (eager, head per row, glibc defaults)": ("eager", "rows", "default"),
    "+ SDPA without gradients": ("sdpa", "rows", "default"),
    "+ one vocabulary projection per batch": ("sdpa", "batched", "default"),
    "+ keep freed memory (all levers)": ("sdpa", "batched", "keep"),
}


def worker(args) -> None:
    import softprompt as sp
    from softprompt.cpu import keep_freed_memory
    from softprompt.inference import Request, batch, run_batch
    from softprompt.inference.batch import split_cached_prefix, fields_of

    attention, head, allocator = SETTINGS[args.setting]
    if allocator == "keep":
        keep_freed_memory()
    backbone = sp.load_backbone(MODEL)
    if attention == "eager":
        backbone.attention_by_length = False                             # the eager model stays eager
    if head == "rows":                                                    # the previous path: one matmul per row
        def per_row(backbone, hidden, rows):
            return torch.cat([batch._last_log_probs.__wrapped__(backbone, hidden, [r]) for r in rows])
        per_row.__wrapped__ = batch._last_log_probs
        batch._last_log_probs = per_row
    folder = Path(args.folder)
    sources = json.loads((folder / "sources.json").read_text())
    models = {n: sp.load_prompted_model(folder / f"{n}.safetensors", backbone) for n in sources}
    rng = random.Random(0)
    out = {"setting": args.setting, "results": []}
    for words in [int(w) for w in args.words.split(",")]:
        texts = {d: texts_for(d, words) for d in set(sources.values())}
        names = [rng.choice(sorted(sources)) for _ in range(args.rows)]
        requests = [Request(models[n], rng.choice(texts[sources[n]]), "classify") for n in names]
        flops = 0.0
        for req in requests:
            row = split_cached_prefix(req.model, req.model.encoder.encode(fields_of(req.model, req.inputs)))
            flops += row_flops(req.model, backbone, len(row.rest.input_ids), row.prefix)
        for size in (args.rows, 1):
            run_batch(backbone, requests[:size])                          # warm up this shape
            seconds = batch_seconds(backbone, requests, size, args.repeats)
            out["results"].append({"words": words, "batch_rows": size, "rows_per_second": len(requests) / seconds,
                                   "gflops_per_row": flops / len(requests) / 1e9})
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--words", default="25,75")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    folder = Path(tempfile.mkdtemp(prefix="levers-"))
    (folder / "sources.json").write_text(json.dumps(make_prompts(folder)))
    ceiling = matmul_gflops(torch.bfloat16)
    print(f"bf16 matmul ceiling ({torch.get_num_threads()} threads): {ceiling:.0f} GFLOP/s", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for round_ in range(args.rounds):
        for name in SETTINGS:
            command = [sys.executable, __file__, "--worker", "--setting", name, "--folder", str(folder),
                       "--words", args.words, "--rows", str(args.rows), "--repeats", str(args.repeats)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1}: {name}: " + ", ".join(
                f"{r['words']}w x{r['batch_rows']} {r['rows_per_second']:.1f}" for r in runs[name][-1]["results"]),
                flush=True)
    ceiling = max(ceiling, matmul_gflops(torch.bfloat16))                 # a busy machine only lowers it
    table = []
    for name, rounds in runs.items():
        for i, cell in enumerate(rounds[0]["results"]):
            rate = statistics.median(r["results"][i]["rows_per_second"] for r in rounds)
            table.append({"setting": name, "words": cell["words"], "batch_rows": cell["batch_rows"],
                          "rows_per_second": rate, "gflops_per_row": cell["gflops_per_row"],
                          "ceiling_rows_per_second": ceiling / cell["gflops_per_row"],
                          "fraction_of_ceiling": rate * cell["gflops_per_row"] / ceiling})
    for row in table:
        base = next(r for r in table if r["words"] == row["words"] and r["batch_rows"] == row["batch_rows"]
                    and r["setting"] == next(iter(SETTINGS)))
        row["vs_before"] = row["rows_per_second"] / base["rows_per_second"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_levers.json").write_text(json.dumps(
        {"model": MODEL, "ceiling_bf16_gflops": ceiling, "threads": torch.get_num_threads(),
         "settings": vars(args), "results": table, "runs": runs}, indent=1))
    lines = [f"bf16 matmul ceiling {ceiling:.0f} GFLOP/s ({torch.get_num_threads()} threads); {args.rounds} rounds, "
             f"medians; {args.rows} mixed-prompt rows over the eight prompts of serve_load.py.", "",
             "| setting | input words | rows per batch | rows/s | vs before | GFLOP per row | % of ceiling |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['words']} | {r['batch_rows']} | {r['rows_per_second']:.1f} | "
              f"{r['vs_before']:.2f}x | {r['gflops_per_row']:.1f} | {r['fraction_of_ceiling']:.0%} |" for r in table]
    (RESULTS / "serve_levers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
