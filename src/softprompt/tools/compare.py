"""`softprompt compare`: adaptation methods side by side on one task, at one budget, measured.

Every (method, seed) runs in its own process -- a fresh backbone (LoRA, adapters and full fine-tuning change it
in place), its own peak memory, and a failure that costs only that row. Each run trains with the same data,
loop, loss, steps and batch size (`training.baselines`), evaluates on the test split and times single-input
classification against the bare backbone in the same process. The parent aggregates seeds and writes
`compare.json`, `compare.md` and `compare.png` into the output folder.

    python -m softprompt compare --model smollm2-135m --data rotten_tomatoes --methods prompt,lora,zeroshot
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import TrainConfig
from ..data import load_task
from ..errors import ConfigError
from ..evaluation import evaluate
from ..formats import atomic_write
from ..hub import load_backbone, resolve_precision
from ..training import train
from ..methods import METHODS, MethodName, method_named
from ..training.baselines import build_method, merge_lora, trainable_count



@dataclass(frozen=True)
class RunSpec:
    """One (method, seed) run; the worker process gets it as JSON."""

    method: str
    seed: int
    model: str
    data: str
    output: str
    max_steps: int
    batch_size: int = 16
    lr: float | None = None          # None: the method's default (METHODS[name].default_lr)
    eval_every: int = 0
    eval_limit: int = 300
    test_limit: int = 0
    latency_rows: int = 50
    precision: str = "auto"


# One task's methods: all but those that train on several datasets at once (multitask).
COMPARABLE = tuple(name for name, method in METHODS.items() if not method.many_tasks)


def parse_methods(text: str) -> list[MethodName]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--methods is empty: give a comma-separated list, e.g. prompt,lora,zeroshot")
    methods = [method_named(name, "--methods", COMPARABLE).name for name in names]
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--methods lists a method twice: {text}")
    return methods


def _latency_ms(models: Sequence, rows: Sequence[dict], fields: Sequence[str]) -> list[float]:
    """Median milliseconds each model takes to classify one input (batch of 1).

    The models take turns on every row (after one warm-up call each), so drift of this machine's speed over the
    measurement hits all of them alike and their ratio is stable.
    """
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for index, row in enumerate(rows):
            for model, bucket in zip(models, times):
                batch = {k: v.to(model.backbone.device)
                         for k, v in model.make_batch([{f: row[f] for f in fields}], label_field=None).items()}
                started = time.perf_counter()
                model.class_scores(batch)
                if index:
                    bucket.append(1000 * (time.perf_counter() - started))
    return [statistics.median(bucket) for bucket in times]


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Train (unless zero-shot), evaluate and time one method; runs in the worker process."""

    method = MethodName(spec.method)
    task = load_task(spec.data)
    compute = resolve_precision(spec.precision, "cpu" if not torch.cuda.is_available() else "cuda")
    # Weight-training methods keep fp32 master weights and compute in the same precision as the others.
    backbone = load_backbone(spec.model, dtype=torch.float32 if METHODS[method].trains_weights else compute)
    if METHODS[method].trains_weights and compute != torch.float32:
        backbone.autocast_dtype = compute
    backbone_params = sum(p.numel() for p in backbone.model.parameters())
    config = TrainConfig(model=spec.model, data=spec.data, output=spec.output, seed=spec.seed,
                         max_steps=spec.max_steps, batch_size=spec.batch_size, eval_every=spec.eval_every,
                         eval_limit=spec.eval_limit, lr=spec.lr or METHODS[method].default_lr or 1e-3,
                         precision=spec.precision,
                         checkpoint_every=0)  # short runs; a full fine-tune's run state would be gigabytes
    torch.manual_seed(spec.seed)
    rows = task.test[: spec.latency_rows + 1]
    fields = task.text_fields
    built = build_method(method, config, backbone, task)
    row: dict[str, Any] = {"method": method.value, "seed": spec.seed, "model": spec.model, "data": spec.data,
                           "trainable_params": trainable_count(built.model),
                           "backbone_params": backbone_params}
    artifact = None
    train_seconds = 0.0
    if built.trains:
        result = train(config, backbone=backbone, task=task, model=built.model, save=built.save, progress=False)
        built_model, artifact, train_seconds = result.model, result.prompt_path, result.train_seconds
    else:
        built_model = built.model
    if METHODS[method].trains_weights and compute != torch.float32:  # evaluate and time as served: in `compute`
        built_model.to(compute)
        built_model.prompt.to(torch.float32)
        backbone.autocast_dtype = None
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the bare copy below loads
    # The bare backbone in the serving dtype, timed in turns with the method (its own load for weight methods).
    serving = backbone if not METHODS[method].trains_weights else load_backbone(spec.model, dtype=compute)
    bare = build_method(MethodName.ZEROSHOT, config, serving, task).model
    extra: dict[str, Any] = {}
    if method is MethodName.LORA:  # served merged (no extra matmuls); the unmerged latency is kept beside it
        unmerged_ms, unmerged_bare_ms = _latency_ms([built_model, bare], rows, fields)
        extra["unmerged_latency_overhead"] = unmerged_ms / unmerged_bare_ms
        extra["merged_layers"] = merge_lora(backbone.model)
    test = evaluate(built_model, task.test, label_field=task.label_field, limit=spec.test_limit)
    latency, bare_ms = _latency_ms([built_model, bare], rows, fields)
    row.update({"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "test_n": test["n"],
                "train_seconds": train_seconds, "artifact_bytes": artifact.stat().st_size if artifact else 0,
                "artifact": str(artifact) if artifact else None,
                "peak_rss_mb": peak_rss_mb,
                "latency_ms": latency, "bare_latency_ms": bare_ms, "steps": spec.max_steps if built.trains else 0,
                "lr": config.lr if built.trains else None, "batch_size": spec.batch_size, **extra})
    return row


def aggregate(rows: list[dict[str, Any]], methods: Sequence[MethodName]) -> list[dict[str, Any]]:
    """One row per method: means over seeds (accuracy also its standard deviation)."""
    table = []
    for method in methods:
        done = [r for r in rows if r["method"] == method.value and "error" not in r]
        failed = [r for r in rows if r["method"] == method.value and "error" in r]
        if not done:
            table.append({"method": method.value, "error": failed[0]["error"] if failed else "no run"})
            continue
        accuracies = [r["accuracy"] for r in done]
        first = done[0]
        table.append({
            "method": method.value, "seeds": len(done), "failed_seeds": len(failed),
            "trainable_params": first["trainable_params"],
            "trainable_percent": 100 * first["trainable_params"] / first["backbone_params"],
            "artifact_bytes": first["artifact_bytes"],
            "accuracy": statistics.mean(accuracies),
            "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "macro_f1": statistics.mean(r["macro_f1"] for r in done),
            "train_seconds": statistics.median(r["train_seconds"] for r in done),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in done),
            "latency_ms": statistics.median(r["latency_ms"] for r in done),
            "latency_overhead": statistics.median(r["latency_ms"] / r["bare_latency_ms"] for r in done),
            "test_n": first["test_n"], "steps": first["steps"], "lr": first["lr"]})
        if all("unmerged_latency_overhead" in r for r in done):
            table[-1]["unmerged_latency_overhead"] = statistics.median(r["unmerged_latency_overhead"] for r in done)
    return table


def _human_bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def _unmerged(row: dict[str, Any]) -> str:
    overhead = row.get("unmerged_latency_overhead")
    return f"; merged, unmerged {overhead:.2f}×" if overhead is not None else ""


def markdown(table: list[dict[str, Any]], title: str) -> str:
    lines = [f"### {title}", "",
             "| method | trainable params | % of backbone | artefact | accuracy (mean ± std) | train s (median) | "
             "peak RSS MB | latency × bare (median ms) |", "|---|---|---|---|---|---|---|---|"]
    for r in table:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        lines.append(f"| {r['method']} | {r['trainable_params']:,} | {r['trainable_percent']:.3g}% | "
                     f"{_human_bytes(r['artifact_bytes'])} | {100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f} "
                     f"(n={r['seeds']}) | {r['train_seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['latency_overhead']:.2f}×{_unmerged(r)} ({r['latency_ms']:.0f}) |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib  # start-up time: plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up time: plots only


    done = [r for r in table if "error" not in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for r in done:
        x = max(r["trainable_params"], 1)
        ax.errorbar(x, 100 * r["accuracy"], yerr=100 * r["accuracy_std"], fmt="o", capsize=3)
        ax.annotate(r["method"], (x, 100 * r["accuracy"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log; zero-shot drawn at 1)")
    ax.set_ylabel("test accuracy %")
    ax.set_title("accuracy vs trainable parameters")
    names = [r["method"] for r in done]
    axes[1].bar(names, [r["train_seconds"] for r in done], color="tab:orange")
    axes[1].set_ylabel("training seconds")
    axes[1].set_title("training time (same steps)")
    # The ratio, not milliseconds: each method is timed in turns with the bare backbone in its own process, so
    # the ratio holds when the machine's speed drifts between runs and the absolute times do not.
    axes[2].bar(names, [r["latency_overhead"] for r in done], color="tab:green")
    axes[2].axhline(1.0, color="grey", linestyle="--", label="bare backbone")
    axes[2].set_ylabel("latency / bare backbone's (batch 1)")
    axes[2].set_title("inference latency overhead")
    axes[2].legend()
    for axis in axes[1:]:
        axis.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def compare(model: str, data: str, methods: Sequence[MethodName], *, seeds: int, max_steps: int, output: Path,
            batch_size: int = 16, eval_limit: int = 300, test_limit: int = 0, precision: str = "auto",
            lr: float | None = None, resume: bool = False, latency_rows: int = 50,
            log=print) -> list[dict[str, Any]]:
    """Run every (method, seed) in its own process; write compare.json/.md/.png; returns the aggregated table.

    With `resume`, rows already finished in `output/runs.jsonl` (same model, data, steps and batch
    size) are kept, not re-run. `latency_rows`: test inputs timed at batch 1 against the bare backbone.
    """

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if max_steps < 1:
        raise ConfigError(f"--max-steps must be >= 1, got {max_steps}")
    output.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if resume and (output / "runs.jsonl").exists():
        for line in (output / "runs.jsonl").read_text().splitlines():
            row = json.loads(line)
            same = (row.get("model"), row.get("data"), row.get("batch_size")) == (model, data, batch_size)
            if "error" not in row and same and row.get("steps") in (0, max_steps):
                done[(row["method"], row["seed"])] = row
    for method in methods:
        for seed in range(seeds if method is not MethodName.ZEROSHOT else 1):  # zero-shot has no randomness
            if (method.value, seed) in done:
                rows.append(done[(method.value, seed)])
                log(f"compare: {method.value} seed {seed}: kept from {output / 'runs.jsonl'}")
                continue
            spec = RunSpec(method.value, seed, model, data, str(output / "runs" / f"{method.value}-seed{seed}"),
                           max_steps, batch_size=batch_size, lr=lr, eval_limit=eval_limit, test_limit=test_limit,
                           precision=precision, latency_rows=latency_rows)
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "softprompt.tools.compare", json.dumps(asdict(spec))],
                                  capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode == 0 and lines:
                row = json.loads(lines[-1])
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                row = {"method": method.value, "seed": seed, "error": tail}
            rows.append(row)
            status = row.get("error") or f"accuracy {100 * row['accuracy']:.1f}%"
            log(f"compare: {method.value} seed {seed}: {status} ({time.perf_counter() - started:.0f} s)")
            # Rows kept from an earlier invocation and not reached yet stay in the file: a run interrupted now
            # must not lose them.
            later = [r for r in done.values() if not any(r is kept for kept in rows)]
            atomic_write(output / "runs.jsonl", lambda tmp: Path(tmp).write_text(
                "".join(json.dumps(r) + "\n" for r in rows + later)))
    table = aggregate(rows, methods)
    title = f"{model} on {data}, {max_steps} steps x batch {batch_size}, {seeds} seed(s)"
    atomic_write(output / "compare.json", lambda tmp: Path(tmp).write_text(json.dumps(table, indent=1)))
    atomic_write(output / "compare.md", lambda tmp: Path(tmp).write_text(markdown(table, title)))
    if any("error" not in r for r in table):
        plot(table, output / "compare.png", title)
    return table


if __name__ == "__main__":  # the worker: one RunSpec as JSON -> one result row as JSON on the last line

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run_one(RunSpec(**json.loads(sys.argv[1])))
    print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}))
