"""The sweep the docs' length and initialisation trends come from (docs/guides/train.md): rotten_tomatoes, smollm2-135m.

learning rate {3e-3, 3e-2, 3e-1} x prompt length {1, 5, 20, 100} x init {random, vocab, labels}, prefix, a
grid of 36 trials at one step budget with median pruning (softprompt.tools.sweep). Resumable: run it again to
finish an interrupted sweep -- also on another machine, since the study journal is kept in
benchmarks/quality/results/sweep/ beside sweep.{json,md,png}, best.yaml and a summary (best score per length and init,
over learning rates) in sweep_summary.md.

    python benchmarks/quality/sweep_rt.py [--budget-steps 24] [--quick]   (the kept study ran 24 steps, 150 rows)

Takes ~20 min on 2 CPU cores (9 trials took 4.6 min).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from softprompt import TrainConfig
from softprompt.tools.sweep import parse_space, sweep

RESULTS = Path(__file__).parent / "results" / "sweep"


def summary(rows: list[dict]) -> str:
    lengths = sorted({r["num_virtual_tokens"] for r in rows})
    inits = sorted({r["init"] for r in rows})
    lines = ["Best validation accuracy (%) over learning rates (pruned trials: their score when stopped).", "",
             "| init | " + " | ".join(f"{n} tokens" for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for init in inits:
        cells = []
        for n in lengths:
            scores = [(r["score"], r["lr"]) for r in rows if r["init"] == init and r["num_virtual_tokens"] == n
                      and r["score"] is not None]
            cells.append(f"{100 * max(scores)[0]:.1f} (lr {max(scores)[1]:g})" if scores else "—")
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    by_lr = {}
    for r in rows:
        if r["score"] is not None:
            by_lr.setdefault(r["lr"], []).append(r["score"])
    lines += ["", "| lr | trials | mean | best | worst |", "|---|---|---|---|---|"]
    for lr in sorted(by_lr):
        s = by_lr[lr]
        lines.append(f"| {lr:g} | {len(s)} | {100 * sum(s) / len(s):.1f} | {100 * max(s):.1f} | {100 * min(s):.1f} |")
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    lines += ["", "trial states: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-steps", type=int, default=24)
    parser.add_argument("--evals", type=int, default=2)
    parser.add_argument("--eval-limit", type=int, default=150)
    parser.add_argument("--quick", action="store_true", help="2 x 2 x 2 grid, 4 steps: a smoke run")
    args = parser.parse_args()
    if args.quick:
        space, steps, out, results = parse_space("3e-3,3e-1", "1,5", "random,labels", "prefix"), 4, \
            Path("runs/bench_sweep_quick"), Path("runs/bench_sweep_quick/results")
    else:
        space, steps, out, results = parse_space("3e-3,3e-2,3e-1", "1,5,20,100", "random,vocab,labels", "prefix"), \
            args.budget_steps, Path("runs/bench_sweep"), RESULTS
    base = TrainConfig(model="smollm2-135m", data="rotten_tomatoes", batch_size=16, eval_limit=args.eval_limit)
    kept = results / "study.journal"
    if not (out / "study.journal").exists() and kept.exists():  # continue the study kept with the results
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kept, out / "study.journal")
    started = time.perf_counter()
    rows = sweep(base, space, out, budget_steps=steps, evals=args.evals,
                 log=lambda line: print(line, flush=True))
    results.mkdir(parents=True, exist_ok=True)
    for name in ("sweep.json", "sweep.md", "sweep.png", "best.yaml", "study.journal"):
        if (out / name).exists():
            shutil.copyfile(out / name, results / name)
    text = summary(rows) + f"\nwall time of this invocation: {(time.perf_counter() - started) / 60:.1f} min\n"
    (results / "sweep_summary.md").write_text(text)
    (results / "sweep_summary.json").write_text(json.dumps({"rows": rows, "budget_steps": steps}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
