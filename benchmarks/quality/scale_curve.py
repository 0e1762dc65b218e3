"""The scale curve (Lester et al. 2021, Figure 1) on this machine: prompt tuning against LoRA, zero-shot and full
fine-tuning (at 135M and 270M: at 0.5B its fp32 weights, gradients and Adam state fit in 24 GB but 30 steps cost
~20 min on 2 cores; at 1.5B they do not fit) as the frozen
backbone grows from 135M to 1.5B parameters, on rotten_tomatoes and bbc_news.

Every method at every size gets the same steps, batch size, data order (seed 0; one seed: the whole curve takes
hours on 2 cores) and test rows; learning rates are
each method's default (softprompt.METHODS[name].default_lr). Each (size, task) is one `softprompt compare`
(every method in its own process), so an interrupted run resumes where it stopped. Writes
benchmarks/quality/results/scale_curve.{json,md,png}; each cell's compare.{json,md} and runs.jsonl go under
benchmarks/quality/results/scale_curve/<task>-<model>/.

    python benchmarks/quality/scale_curve.py [--steps 30] [--batch-size 8] [--only rotten_tomatoes] [--quick] [--report]

Takes ~80 min on 2 CPU cores for `rotten_tomatoes` (the 1.5B cell ~45 min), ~120 min for `bbc_news` (the 1.5B cell
~45 min).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from softprompt.formats import atomic_write
from softprompt.tools.compare import compare, parse_methods

RESULTS = Path(__file__).parent / "results"
WORK = Path("runs/bench_scale_curve")
MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b")
TASKS = {"rotten_tomatoes": 200, "bbc_news": 120}  # task -> test rows (the first N of its test split)
FULL_FITS = {"smollm2-135m", "gemma3-270m"}  # 1.5B: 6 GB weights + 6 GB grads + 12 GB Adam > 24 GB
METHODS = ("prompt", "lora", "full", "zeroshot")


def cell_methods(model: str) -> str:
    return ",".join(m for m in METHODS if m != "full" or model in FULL_FITS)


def markdown(cells: list[dict], steps: int, batch_size: int, seed: int) -> str:
    lines = [f"Test accuracy (%) after {steps} steps x batch {batch_size} (seed {seed}, each method's default "
             "learning rate); `-`: not run (full fine-tuning: 0.5B fits in memory but was not run for time, 1.5B "
             "does not fit in 24 GB).", ""]
    for task in TASKS:
        rows = [c for c in cells if c["data"] == task]
        if not rows:
            continue
        lines += [f"### {task} (first {rows[0]['test_limit']} test rows)", "",
                  "| backbone | parameters | " + " | ".join(METHODS) + " | prompt - lora | prompt train s | "
                  "lora train s |", "|---|---|" + "---|" * (len(METHODS) + 3)]
        for cell in rows:
            table = {r["method"]: r for r in cell["table"]}

            def acc(method: str) -> str:
                r = table.get(method)
                if r is None:
                    return "-"
                return f"failed: {r['error'][:60]}" if "error" in r else f"{100 * r['accuracy']:.1f}"

            gap = "-"
            if all(m in table and "error" not in table[m] for m in ("prompt", "lora")):
                gap = f"{100 * (table['prompt']['accuracy'] - table['lora']['accuracy']):+.1f}"
            secs = [f"{table[m]['train_seconds']:.0f}" if m in table and "error" not in table[m] else "-"
                    for m in ("prompt", "lora")]
            params = cell["backbone_params"]
            lines.append(f"| {cell['model']} | {params / 1e6:.0f}M | " + " | ".join(acc(m) for m in METHODS)
                         + f" | {gap} | {secs[0]} | {secs[1]} |")
        lines.append("")
    return "\n".join(lines)


def plot(cells: list[dict], path: Path, steps: int, batch_size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(c["data"] == t for c in cells)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.3), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [c for c in cells if c["data"] == task]
        for method, style in zip(METHODS, ("o-", "s-", "^-", "x--")):
            points = sorted((c["backbone_params"], r["accuracy"]) for c in rows for r in c["table"]
                            if r["method"] == method and "error" not in r)
            if points:
                ax.plot([p / 1e6 for p, _ in points], [100 * a for _, a in points], style, label=method)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([c["backbone_params"] / 1e6 for c in rows],
                      [f"{c['model']}\n{c['backbone_params'] / 1e6:,.0f}M" for c in rows], fontsize=8)
        ax.set_xlabel("backbone parameters (log)")
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"{task}: {steps} steps x batch {batch_size}")
        ax.grid(alpha=0.3)
        if rows:
            ax.legend()
    fig.suptitle("prompt tuning vs LoRA, full fine-tuning and zero-shot as the backbone grows", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--only", default=",".join(TASKS), help=f"comma-separated subset of {', '.join(TASKS)}")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset, smallest first")
    parser.add_argument("--quick", action="store_true", help="2 steps, 16 test rows, 135M only: a smoke run")
    parser.add_argument("--report", action="store_true", help="only draw the table and plot again from the JSON")
    args = parser.parse_args()
    tasks = [t.strip() for t in args.only.split(",") if t.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.quick:
        args.steps, models = 2, ["smollm2-135m"]
    work = WORK / "quick" if args.quick else WORK
    results = work / "results" if args.quick else RESULTS
    combined_path = results / "scale_curve.json"
    combined = json.loads(combined_path.read_text()) if combined_path.exists() else {"cells": []}
    if args.report:
        cells = combined["cells"]
        text = markdown(cells, cells[0]["steps"], cells[0]["batch_size"], 0)
        atomic_write(results / "scale_curve.md", lambda tmp: Path(tmp).write_text(text))
        plot(cells, results / "scale_curve.png", cells[0]["steps"], cells[0]["batch_size"])
        return
    for task in tasks:
        for model in models:
            name = f"{task}-{model}"
            test_limit = 16 if args.quick else TASKS[task]
            started = time.perf_counter()
            table = compare(model, task, parse_methods(cell_methods(model)), seeds=1, max_steps=args.steps,
                            output=work / name, batch_size=args.batch_size, eval_limit=100, test_limit=test_limit,
                            resume=True, latency_rows=4, log=lambda line: print(f"{name}: {line}", flush=True))
            rows = [json.loads(line) for line in (work / name / "runs.jsonl").read_text().splitlines()]
            params = next((r["backbone_params"] for r in rows if "backbone_params" in r), 0)
            cell = {"model": model, "data": task, "backbone_params": params, "steps": args.steps,
                    "batch_size": args.batch_size, "seed": 0, "test_limit": test_limit,
                    "wall_seconds": time.perf_counter() - started, "table": table}
            combined["cells"] = [c for c in combined["cells"] if (c["model"], c["data"]) != (model, task)] + [cell]
            combined["cells"].sort(key=lambda c: (list(TASKS).index(c["data"]), c["backbone_params"]))
            (results / "scale_curve" / name).mkdir(parents=True, exist_ok=True)
            for file in ("compare.json", "compare.md", "runs.jsonl"):
                if (work / name / file).exists():
                    shutil.copyfile(work / name / file, results / "scale_curve" / name / file)
            atomic_write(combined_path, lambda tmp: Path(tmp).write_text(json.dumps(combined, indent=1)))
            text = markdown(combined["cells"], args.steps, args.batch_size, 0)
            atomic_write(results / "scale_curve.md", lambda tmp: Path(tmp).write_text(text))
            plot(combined["cells"], results / "scale_curve.png", args.steps, args.batch_size)
            print(f"{name}: done in {cell['wall_seconds'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
