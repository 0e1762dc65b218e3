"""The README's figures: zero-shot vs trained prompt with default settings, on the built-in tasks.

For each dataset: test accuracy of the template alone (zero-shot, same template and label words), then
`softprompt train` with defaults (20 virtual tokens, labels init, prefix, 1 epoch, batch 16, lr 0.03,
bf16 autocast where the CPU has it), its training wall time, and the test accuracy of the best prompt.
Writes benchmarks/quality/results/core_figures.json and core_figures.md.

    python benchmarks/quality/core_figures.py [--datasets rotten_tomatoes,bbc_news] [--epochs 1]

Takes ~30 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import softprompt as sp

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="rotten_tomatoes,bbc_news")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--output", default="runs/figures")
    parser.add_argument("--tag", default="core_figures")
    args = parser.parse_args()

    dtype = sp.resolve_precision("auto")
    backbone = sp.load_backbone(args.model, dtype=dtype)
    rows = []
    for name in args.datasets.split(","):
        task = sp.load_task(name)
        verbalizer = sp.Verbalizer.from_spec(task.labels)
        zero = sp.PromptedModel.zero_shot(backbone, task.default_template, verbalizer)
        zero_result = sp.evaluate(zero, task.test, progress=True)
        print(f"{name}: zero-shot test accuracy {zero_result['accuracy']:.4f}", flush=True)

        config = sp.TrainConfig(model=args.model, data=name, output=f"{args.output}/{name}", epochs=args.epochs)
        started = time.perf_counter()
        result = sp.train(config, backbone=backbone, task=task)
        wall = time.perf_counter() - started
        test = sp.evaluate(result.model, task.test, progress=True)
        size = result.prompt_path.stat().st_size
        row = {
            "dataset": name, "model": args.model, "dtype": str(dtype).replace("torch.", ""),
            "train_examples": len(task.train), "test_examples": len(task.test),
            "zero_shot_test_accuracy": zero_result["accuracy"], "zero_shot_macro_f1": zero_result["macro_f1"],
            "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
            "best_validation_accuracy": result.best_validation.get("accuracy"), "best_step": result.best_step,
            "steps": result.steps, "train_seconds": round(result.train_seconds, 1),
            "train_wall_seconds_with_evals": round(wall, 1),
            "seconds_per_step": round(result.train_seconds / result.steps, 3),
            "prompt_file_bytes": size, "num_virtual_tokens": result.model.prompt.num_virtual_tokens,
            "config": {k: v for k, v in config.to_dict().items() if k in (
                "num_virtual_tokens", "placement", "init", "lr", "batch_size", "epochs", "max_length")},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "softprompt": sp.__version__, "date": time.strftime("%Y-%m-%d")}
    (RESULTS / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| dataset | zero-shot test acc | trained test acc | train time (s) | s/step | steps | prompt file |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['zero_shot_test_accuracy']:.1%} | {r['test_accuracy']:.1%} | "
                     f"{r['train_seconds']:.0f} | {r['seconds_per_step']:.2f} | {r['steps']} | "
                     f"{r['prompt_file_bytes'] / 1024:.1f} KB |")
    table = "\n".join(lines)
    (RESULTS / f"{args.tag}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
