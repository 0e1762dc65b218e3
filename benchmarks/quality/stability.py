"""Learning-rate stability of prompt tuning: plain prompts vs residual prompts vs DePT at one fixed step budget.

Residual prompt tuning (Razdaibiedina et al., 2023) and DePT (Shi & Lipani, 2024) both claim to make prompt
tuning less sensitive to its learning rate. This measures it: each method (`plain`: --method prompt; `residual`:
--method residual; `dept`: --method dept at the parameter count of a 20-token prompt) trains on rotten_tomatoes
with smollm2-135m at every learning rate x seed for the same steps, batch size and data order, and is scored on the
first N test rows at the end (no validation during training: the budget's last prompt is scored). The learning
rate is the prompt's (--lr); DePT's low-rank offset keeps its own default rate (--dept-lr), as in the paper, which
tunes the two separately. Per method: mean and standard deviation of the accuracy over every (lr, seed) run, and
the worst-to-best spread; per (method, lr): the mean and std over seeds. A run that diverges (the divergence
guard gives up) counts as failed and is listed, not averaged.

Writes stability.json, stability.md and stability.png into --output (default benchmarks/quality/results/), and each run's
row to stability_runs.jsonl there as it finishes: an interrupted run continues where it stopped.

    python benchmarks/quality/stability.py                                    # the real bench (make stability-bench)
    python benchmarks/quality/stability.py --steps 2 --eval-limit 16 --seeds 1 --lrs 3e-2 --output /tmp/stability

Takes ~35 min on 2 CPU cores (27 runs of ~75 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from softprompt import TrainConfig, evaluate, load_backbone, load_task, train
from softprompt.errors import SoftPromptError
from softprompt.formats import atomic_write
from softprompt.hub import resolve_precision

RESULTS = Path(__file__).parent / "results"
# method -> the training options that make it (the rest is shared)
METHODS = {"plain": {}, "residual": {"method": "residual"}, "dept": {"method": "dept"}}
LRS = (3e-3, 3e-2, 3e-1)


def run_one(backbone, task, method: str, lr: float, seed: int, args, work: Path) -> dict:
    """Train one (method, lr, seed) for the fixed budget and score the last prompt on the test rows."""
    config = TrainConfig(model=args.model, data=args.data, output=str(work / f"{method}-lr{lr:g}-seed{seed}"),
                         seed=seed, lr=lr, max_steps=args.steps, batch_size=args.batch_size, eval_every=0,
                         eval_limit=16, checkpoint_every=0, precision=args.precision, **METHODS[method])
    row = {"method": method, "lr": lr, "seed": seed, "steps": args.steps, "eval_limit": args.eval_limit}
    started = time.perf_counter()
    try:
        result = train(config, backbone=backbone, task=task, progress=False)
    except SoftPromptError as exc:  # the divergence guard gave up: a failed run, reported as such
        return {**row, "error": str(exc), "seconds": time.perf_counter() - started}
    scores = evaluate(result.model, task.test, label_field=task.label_field, limit=args.eval_limit)
    losses = [h["loss"] for h in result.history if "loss" in h]
    return {**row, "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "n": scores["n"],
            "final_train_loss": losses[-1] if losses else None, "seconds": time.perf_counter() - started,
            "trainable_params": sum(p.numel() for p in result.model.parameters() if p.requires_grad)}


def summarise(rows: list[dict], methods: list[str], lrs: list[float]) -> dict:
    """Per method: mean, std and worst-to-best spread over every (lr, seed) run; per (method, lr): over seeds."""
    out: dict = {}
    for method in methods:
        done = [r for r in rows if r["method"] == method and "error" not in r]
        accuracies = [r["accuracy"] for r in done]
        entry = {"runs": len(done), "failed": sum(1 for r in rows if r["method"] == method and "error" in r)}
        if accuracies:
            entry.update({"mean": statistics.mean(accuracies),
                          "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                          "worst": min(accuracies), "best": max(accuracies),
                          "spread": max(accuracies) - min(accuracies)})
        per_lr = {}
        for lr in lrs:
            at = [r["accuracy"] for r in done if r["lr"] == lr]
            per_lr[f"{lr:g}"] = ({"mean": statistics.mean(at), "std": statistics.stdev(at) if len(at) > 1 else 0.0,
                                  "runs": len(at)} if at else {"runs": 0})
        entry["by_lr"] = per_lr
        lr_means = [v["mean"] for v in per_lr.values() if v["runs"]]
        if lr_means:  # the learning-rate sensitivity itself, seeds averaged out; and the worst seed std at one lr
            entry["lr_spread"] = max(lr_means) - min(lr_means)
            entry["max_seed_std"] = max(v["std"] for v in per_lr.values() if v["runs"])
        out[method] = entry
    return out


def markdown(summary: dict, lrs: list[float], title: str) -> str:
    lines = [f"### {title}", "",
             "| method | mean accuracy | std | worst | best | worst-to-best spread | spread of lr means | "
             "largest seed std | " + " | ".join(f"lr {lr:g} (mean ± std)" for lr in lrs) + " | failed runs |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(lrs) + "---|"]
    for method, s in summary.items():
        if not s["runs"]:
            lines.append(f"| {method} | no finished run | | | | | | | " + "| " * len(lrs) + f"{s['failed']} |")
            continue
        cells = []
        for lr in lrs:
            at = s["by_lr"][f"{lr:g}"]
            cells.append(f"{100 * at['mean']:.1f} ± {100 * at['std']:.1f}" if at["runs"] else "—")
        lines.append(f"| {method} | {100 * s['mean']:.1f} | {100 * s['std']:.1f} | {100 * s['worst']:.1f} | "
                     f"{100 * s['best']:.1f} | {100 * s['spread']:.1f} points | {100 * s['lr_spread']:.1f} points | "
                     f"{100 * s['max_seed_std']:.1f} | " + " | ".join(cells)
                     + f" | {s['failed']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], methods: list[str], lrs: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for offset, method in zip((-0.04, 0.0, 0.04), methods):
        done = [r for r in rows if r["method"] == method and "error" not in r]
        shift = 10 ** offset  # side by side on the log axis
        ax.scatter([r["lr"] * shift for r in done], [100 * r["accuracy"] for r in done], alpha=0.5, s=18)
        means = [(lr, statistics.mean(r["accuracy"] for r in done if r["lr"] == lr)) for lr in lrs
                 if any(r["lr"] == lr for r in done)]
        ax.plot([lr * shift for lr, _ in means], [100 * m for _, m in means], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("prompt learning rate (log)")
    ax.set_ylabel("test accuracy % (each seed a dot, the line the mean)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="rotten_tomatoes")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in LRS), help="comma-separated prompt learning rates")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps of every run (the fixed budget)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-limit", type=int, default=500, help="test rows each run is scored on (0 = all)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for stability.{json,md,png}")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := sorted(set(methods) - set(METHODS)):
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    lrs = [float(v) for v in args.lrs.split(",") if v.strip()]
    if not lrs or args.seeds < 1 or args.steps < 1:
        parser.error("give at least one learning rate, --seeds >= 1 and --steps >= 1")

    args.output.mkdir(parents=True, exist_ok=True)
    runs_path = args.output / "stability_runs.jsonl"
    key = ("method", "lr", "seed", "steps", "eval_limit")
    kept = [json.loads(line) for line in runs_path.read_text().splitlines()] if runs_path.exists() else []
    done = {tuple(r[k] for k in key): r for r in kept}
    task = load_task(args.data)
    backbone = None  # loaded once, only if something is left to run (prompt methods never change it)
    rows = []
    with tempfile.TemporaryDirectory(prefix="stability-") as work:
        for method in methods:
            for lr in lrs:
                for seed in range(args.seeds):
                    row = done.get((method, lr, seed, args.steps, args.eval_limit))
                    if row is None:
                        if backbone is None:
                            dtype = resolve_precision(args.precision, "cuda" if torch.cuda.is_available() else "cpu")
                            backbone = load_backbone(args.model, dtype=dtype)
                        row = run_one(backbone, task, method, lr, seed, args, Path(work))
                        done[tuple(row[k] for k in key)] = row
                        atomic_write(runs_path, lambda tmp: Path(tmp).write_text(
                            "".join(json.dumps(r) + "\n" for r in done.values())))
                    rows.append(row)
                    status = row.get("error") or f"accuracy {100 * row['accuracy']:.1f}%"
                    print(f"stability: {method} lr {lr:g} seed {seed}: {status} ({row['seconds']:.0f} s)", flush=True)
    summary = summarise(rows, methods, lrs)
    title = (f"{args.model} on {args.data}: {args.steps} steps x batch {args.batch_size}, {args.seeds} seed(s), "
             f"scored on {args.eval_limit or 'all'} test rows")
    report = {"model": args.model, "data": args.data, "steps": args.steps, "batch_size": args.batch_size,
              "seeds": args.seeds, "lrs": lrs, "eval_limit": args.eval_limit, "precision": args.precision,
              "dept_lr": TrainConfig(data=args.data).dept.lr, "summary": summary, "runs": rows}
    atomic_write(args.output / "stability.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    table = markdown(summary, lrs, title)
    atomic_write(args.output / "stability.md", lambda tmp: Path(tmp).write_text(table))
    if any("error" not in r for r in rows):
        plot(rows, methods, lrs, args.output / "stability.png", title)
    print(table)


if __name__ == "__main__":
    main()
