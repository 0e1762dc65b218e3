"""A refactor must not cost speed: the same training step and classification throughput, measured on an older
checkout of softprompt and on this one, side by side in one run.

Each (version, repeat) runs in its own process, alternating old and new (so machine noise hits both alike), on
smollm2-135m / rotten_tomatoes with `make bench`'s defaults (20-token prefix prompt, batch 16, bf16 autocast):

- training: median seconds of a forward + backward + optimiser step over `--steps` steps (2 warm-up steps
  excluded), the same batches on both sides;
- classification: rows/s of `PromptBank.classify` (the server's path) on 256 test rows in requests of 32, and of
  `evaluate` (the `eval` verb's path).

Only public names that both versions export are used. Writes benchmarks/training/results/before_after.json and .md.

    git worktree add /tmp/softprompt-old <commit>
    python benchmarks/training/before_after.py --old-src /tmp/softprompt-old/src [--repeats 3] [--name before_after]

Takes ~8 min on 2 CPU cores (3 repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
NEW_SRC = Path(__file__).parents[2] / "src"

WORKER = r"""
import json, statistics, sys, time
import torch
import softprompt as sp

steps = int(sys.argv[1])
torch.manual_seed(0)
backbone = sp.load_backbone("smollm2-135m")
task = sp.load_task("rotten_tomatoes")
config = sp.TrainConfig(data="rotten_tomatoes", output="/tmp/unused-before-after", num_virtual_tokens=20,
                        init="labels", placement="prefix", batch_size=16, max_length=128, lr=0.03)
model = sp.build_prompted_model(config, backbone, task)
model.train()
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=0.03)
rows = task.train
times = []
for step in range(steps + 2):
    chunk = rows[step * 16:(step + 1) * 16]
    batch = {k: v.to(backbone.device) for k, v in model.make_batch(chunk).items()}
    started = time.perf_counter()
    loss, _ = model.loss(batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if step >= 2:
        times.append(time.perf_counter() - started)
model.eval()
test = task.test[:256]
bank = sp.PromptBank(backbone)
bank.add("p", model)
texts = [{"text": r["text"]} for r in test]
bank.classify([("p", t) for t in texts[:32]])  # warm-up
started = time.perf_counter()
for start in range(0, len(texts), 32):
    bank.classify([("p", t) for t in texts[start:start + 32]])
bank_rows = len(texts) / (time.perf_counter() - started)
started = time.perf_counter()
result = sp.evaluate(model, test, batch_size=32)
eval_rows = len(test) / (time.perf_counter() - started)
print(json.dumps({"step_seconds": statistics.median(times), "bank_rows_per_s": bank_rows,
                  "eval_rows_per_s": eval_rows, "accuracy_after_steps": result["accuracy"]}))
"""


def run(src: Path, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", WORKER, str(steps)], capture_output=True, text=True, env=env,
                          timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"worker on {src} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-src", type=Path, required=True, help="the older checkout's src folder")
    parser.add_argument("--old-label", default="before")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--name", default="before_after", help="results/NAME.json and .md")
    args = parser.parse_args()
    sides = {args.old_label: args.old_src.resolve(), "after": NEW_SRC.resolve()}
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for repeat in range(args.repeats):
        for name, src in sides.items():
            runs[name].append(run(src, args.steps))
            print(f"repeat {repeat + 1} {name}: {runs[name][-1]}", flush=True)
    metrics = ("step_seconds", "bank_rows_per_s", "eval_rows_per_s")
    medians = {name: {m: statistics.median(r[m] for r in rs) for m in metrics} for name, rs in runs.items()}
    old, new = medians[args.old_label], medians["after"]
    ratios = {"step_speed": old["step_seconds"] / new["step_seconds"],
              "bank_throughput": new["bank_rows_per_s"] / old["bank_rows_per_s"],
              "eval_throughput": new["eval_rows_per_s"] / old["eval_rows_per_s"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"runs": runs, "medians": medians, "ratios": ratios,
                                                           "old_src": str(args.old_src)}, indent=1))
    lines = ["| side | train step (s, median) | bank classify (rows/s) | evaluate (rows/s) |", "|---|---|---|---|"]
    for name, m in medians.items():
        lines.append(f"| {name} | {m['step_seconds']:.3f} | {m['bank_rows_per_s']:.1f} | {m['eval_rows_per_s']:.1f} |")
    lines.append(f"| after / before | {ratios['step_speed']:.2f}x speed | {ratios['bank_throughput']:.2f}x | "
                 f"{ratios['eval_throughput']:.2f}x |")
    table = "\n".join(lines)
    (RESULTS / f"{args.name}.md").write_text(f"{args.repeats} alternating runs per side, medians; ratios > 1 mean "
                                             f"this checkout is faster.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
