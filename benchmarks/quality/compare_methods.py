"""The measured method table: `softprompt compare` at one fixed budget on two tasks and two backbone sizes.

Five comparisons, each every (method, seed) in its own process (softprompt.tools.compare):
- rt135: smollm2-135m on rotten_tomatoes: prompt, residual, dept, deep, lora, adapter, full, probe, zeroshot;
- rt135long: the three prompt methods at twice the steps (120), and rt135full75: full fine-tuning at 75 steps -- the
  same training time as 120 prompt steps (a full fine-tuning step costs 1.59x a prompt's, measured side by side by
  benchmarks/training/dept_speed.py): the gap to full fine-tuning at equal wall-clock;
- bbc135: smollm2-135m on bbc_news (5 topics): every method, 1 seed; bbc135x3: prompt, residual, dept and full
  with 3 seeds (seed 0 of prompt and full shared with bbc135 when its runs.jsonl is there);
- rt270: gemma3-270m on rotten_tomatoes: prompt, residual, dept, deep, lora, full, zeroshot -- with the smollm2
  rows, how the gap to full fine-tuning changes from 135M to 270M parameters.
Every trained method gets the same steps, batch size, data order and evaluation; learning rates are each method's
default (softprompt.METHODS[name].default_lr). Writes benchmarks/quality/results/compare_methods.{json,md} and
compare_gap.png, and each comparison's compare.{json,md,png} under benchmarks/quality/results/compare/<name>/.
Artefacts (a full fine-tune is a whole model) stay under runs/bench_compare/. Interrupted runs resume: finished
(method, seed) rows are kept.

    python benchmarks/quality/compare_methods.py [--only rt135,bbc135,rt270] [--quick]

Takes several hours on 2 CPU cores (5 suites; finished rows are kept).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from softprompt.formats import atomic_write
from softprompt.tools.compare import compare, parse_methods

RESULTS = Path(__file__).parent / "results"
WORK = Path("runs/bench_compare")
ALL = "prompt,residual,dept,deep,lora,adapter,full,probe,zeroshot"
PROMPTS = "prompt,residual,dept"
# The rows whose gap to `full` is plotted against backbone size.
SIZE_METHODS = ("prompt", "residual", "dept", "deep", "lora")

# name -> (model, data, methods, seeds, steps, test rows (0 = all))
SUITES = {
    "rt135": ("smollm2-135m", "rotten_tomatoes", ALL, 3, 60, 1000),
    "rt135long": ("smollm2-135m", "rotten_tomatoes", PROMPTS, 3, 120, 1000),
    "rt135full75": ("smollm2-135m", "rotten_tomatoes", "full", 3, 75, 1000),
    "rt270": ("gemma3-270m", "rotten_tomatoes", "prompt,residual,dept,deep,lora,full,zeroshot", 1, 60, 500),
    "bbc135": ("smollm2-135m", "bbc_news", "prompt,deep,lora,adapter,full,probe,zeroshot", 1, 40, 300),
    "bbc135x3": ("smollm2-135m", "bbc_news", PROMPTS + ",full", 3, 40, 300),
}
SHARED = {"bbc135x3": "bbc135"}  # a suite that starts from another's finished rows (same model, data and steps)
BACKBONE_PARAMS = {}  # filled from the rows (parameters of the loaded backbone)


def gap_rows(tables: dict[str, list[dict]]) -> list[dict]:
    """Per backbone on rotten_tomatoes: each method's accuracy and its gap to full fine-tuning (points)."""
    out = []
    for name in ("rt135", "rt270"):
        table = {r["method"]: r for r in tables.get(name, []) if "error" not in r}
        if "full" not in table:
            continue
        for method in SIZE_METHODS:
            if method in table:
                out.append({"suite": name, "model": SUITES[name][0], "backbone_params": BACKBONE_PARAMS[name],
                            "method": method, "accuracy": table[method]["accuracy"],
                            "full_accuracy": table["full"]["accuracy"],
                            "gap_points": 100 * (table["full"]["accuracy"] - table[method]["accuracy"])})
    return out


def plot_gap(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method in SIZE_METHODS:
        points = sorted((r["backbone_params"], r["gap_points"]) for r in rows if r["method"] == method)
        if points:
            ax.plot([p / 1e6 for p, _ in points], [g for _, g in points], marker="o", label=method)
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("backbone parameters (millions, log)")
    ax.set_ylabel("full fine-tuning accuracy minus method's (points)")
    ax.set_title("gap to full fine-tuning vs backbone size (rotten_tomatoes)")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def seed_rows(name: str, work: Path, results: Path) -> None:
    """Start a suite from finished rows: its own committed runs.jsonl, and those of the suite it shares runs with.

    `compare(resume=True)` keeps the rows that match its model, data, steps and batch size and runs only the rest.
    """
    target = work / name / "runs.jsonl"
    if target.exists():
        return
    sources = [results / name / "runs.jsonl"]
    if name in SHARED:
        sources += [work / SHARED[name] / "runs.jsonl", results / SHARED[name] / "runs.jsonl"]
    lines: dict[tuple[str, int], str] = {}
    for source in sources:
        if source.exists():
            for line in source.read_text().splitlines():
                row = json.loads(line)
                if "error" not in row:
                    lines.setdefault((row["method"], row["seed"]), line)
    if lines:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in lines.values())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SUITES), help=f"comma-separated subset of {', '.join(SUITES)}")
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 seed, 40 test rows: a smoke run")
    args = parser.parse_args()
    chosen = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(chosen) - set(SUITES)
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; choose from {', '.join(SUITES)}")
    work = WORK / "quick" if args.quick else WORK
    results = RESULTS / "compare" if not args.quick else work / "results"
    combined_path = (RESULTS if not args.quick else results) / "compare_methods.json"
    combined = json.loads(combined_path.read_text()) if combined_path.exists() else {"suites": {}}
    for name in chosen:
        model, data, methods, seeds, steps, test_limit = SUITES[name]
        if args.quick:
            seeds, steps, test_limit = 1, 2, 40
        if not args.quick:
            seed_rows(name, work, results)
        started = time.perf_counter()
        table = compare(model, data, parse_methods(methods), seeds=seeds, max_steps=steps, output=work / name,
                        batch_size=16, eval_limit=300, test_limit=test_limit, resume=True,
                        log=lambda line: print(line, flush=True))
        rows = [json.loads(line) for line in (work / name / "runs.jsonl").read_text().splitlines()]
        params = [r["backbone_params"] for r in rows if "backbone_params" in r]
        before = combined["suites"].get(name, {}).get("wall_seconds", 0.0)  # earlier, interrupted invocations
        combined["suites"][name] = {"model": model, "data": data, "seeds": seeds, "steps": steps, "batch_size": 16,
                                    "test_limit": test_limit, "backbone_params": params[0] if params else None,
                                    "wall_seconds": before + time.perf_counter() - started, "table": table}
        (results / name).mkdir(parents=True, exist_ok=True)
        for file in ("compare.json", "compare.md", "compare.png", "runs.jsonl"):
            if (work / name / file).exists():
                shutil.copyfile(work / name / file, results / name / file)
        atomic_write(combined_path, lambda tmp: Path(tmp).write_text(json.dumps(combined, indent=1)))
    for name, suite in combined["suites"].items():
        BACKBONE_PARAMS[name] = suite["backbone_params"]
    gaps = gap_rows({name: suite["table"] for name, suite in combined["suites"].items()})
    combined["gap_to_full"] = gaps
    atomic_write(combined_path, lambda tmp: Path(tmp).write_text(json.dumps(combined, indent=1)))
    lines = []
    for name, suite in combined["suites"].items():
        lines.append((results / name / "compare.md").read_text())
        lines.append(f"({suite['wall_seconds'] / 60:.0f} min wall for all its runs)\n")
    if gaps:
        lines += ["### Gap to full fine-tuning vs backbone size (rotten_tomatoes)", "",
                  "| backbone | method | accuracy | full fine-tuning | gap (points) |", "|---|---|---|---|---|"]
        for r in gaps:
            lines.append(f"| {r['model']} ({r['backbone_params'] / 1e6:.0f}M) | {r['method']} | "
                         f"{100 * r['accuracy']:.1f} | {100 * r['full_accuracy']:.1f} | {r['gap_points']:+.1f} |")
        plot_gap(gaps, combined_path.with_name("compare_gap.png"))
        lines.append(f"\nmedian gap: {statistics.median(r['gap_points'] for r in gaps):+.1f} points")
    atomic_write(combined_path.with_suffix(".md"), lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
