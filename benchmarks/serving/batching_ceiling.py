"""The most any batching can gain on this machine: per-row cost of `run_batch` one row at a time vs in
mixed-prompt batches of 4-32 rows, in process (no HTTP, no queueing), on the eight prompts of serve_load.py.

If a batch of 32 rows costs nearly 32 single rows, no scheduler can make batching pay much: that is the
ceiling the server's mixed-prompt batching works under. Writes results/batching_ceiling.json and .md.

    python benchmarks/serving/batching_ceiling.py [--rows 32] [--repeats 3]

Takes ~3 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from serve_load import MODEL, RESULTS, batch_seconds, make_prompts, texts_for

import softprompt as sp
from softprompt.inference import Request, run_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--words", default="60,12")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ceiling-"))
    sources = make_prompts(folder)
    backbone = sp.load_backbone(MODEL)
    models = {name: sp.load_prompted_model(folder / f"{name}.safetensors", backbone) for name in sources}
    rng = random.Random(0)
    rows_out = []
    for words in [int(w) for w in args.words.split(",")]:
        texts = {data: texts_for(data, words) for data in set(sources.values())}
        names = [rng.choice(sorted(sources)) for _ in range(args.rows)]
        requests = [Request(models[n], rng.choice(texts[sources[n]]), "classify") for n in names]
        run_batch(backbone, requests[:8])  # warm up
        for size in (1, 4, 8, 16, 32):
            if size > args.rows:
                continue
            seconds = batch_seconds(backbone, requests, size, args.repeats)
            rows_out.append({"words": words, "batch_rows": size, "rows_per_second": len(requests) / seconds})
            print(json.dumps(rows_out[-1]), flush=True)
    for row in rows_out:
        single = next(r for r in rows_out if r["words"] == row["words"] and r["batch_rows"] == 1)
        row["vs_one_row"] = row["rows_per_second"] / single["rows_per_second"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batching_ceiling.json").write_text(json.dumps({"model": MODEL, "rows": args.rows,
                                                              "results": rows_out}, indent=1))
    lines = ["| input words | rows per batch | rows/s | vs one row at a time |", "|---|---|---|---|"]
    lines += [f"| {r['words']} | {r['batch_rows']} | {r['rows_per_second']:.1f} | {r['vs_one_row']:.2f}x |"
              for r in rows_out]
    (RESULTS / "batching_ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
