"""Soft prompts on a sentence encoder with a light head, measured: all-MiniLM-L6-v2 (`minilm-l6`).

Per dataset (rotten_tomatoes, bbc_news), the same steps of 16 rows, data order and validation rows:

- `head`: the linear head alone on the frozen mean-pooled output (a linear probe: the encoder's own features);
- `prompt+head`: 20 soft tokens + the head (what `softprompt train --model minilm-l6` does);
- `full+head`: every encoder weight + the head (full fine-tuning, the ceiling).

Reports test accuracy, trainable parameters and artefact size, training seconds. Writes
benchmarks/quality/results/encoders.{json,md}.

    python benchmarks/quality/encoders.py [--steps 150] [--seeds 2] [--test-limit 1000]

Takes ~1 h on 2 CPU cores (with other work on them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import softprompt as sp
from softprompt.evaluation import evaluate
from softprompt.kinds.encoder.models import EncoderClassifier
from softprompt.prompts import SoftPrompt
from softprompt.template import Template

RESULTS = Path(__file__).parent / "results"
WORK = Path("runs/bench_encoders")
MODEL = "minilm-l6"
# Learning rates: the prompt's usual 3e-2; a linear head 1e-2; encoder weights 5e-5 (BERT fine-tuning's range).
SETTINGS = {"head": dict(lr=1e-2, head_lr=1e-2), "prompt+head": dict(lr=3e-2, head_lr=1e-2),
            "full+head": dict(lr=5e-5, head_lr=1e-2)}


def _config(args, data: str, method: str, seed: int) -> sp.TrainConfig:
    return sp.TrainConfig(model=MODEL, data=data, output=str(WORK / f"{data}-{method}-{seed}"), max_steps=args.steps,
                          eval_every=max(1, args.steps // 3), eval_limit=args.eval_limit, batch_size=16, seed=seed,
                          num_virtual_tokens=20, checkpoint_every=0, precision=args.precision, **SETTINGS[method])


def run(args, data: str, method: str, seed: int) -> dict:
    dtype = sp.resolve_precision(args.precision)
    # Fresh per run (full fine-tuning changes it); trained weights keep fp32 masters under bf16 autocast.
    backbone = sp.load_backbone(MODEL, dtype=torch.float32 if method == "full+head" else dtype)
    task = sp.load_task(data)
    config = _config(args, data, method, seed)
    model = save = None
    if method != "prompt+head":
        torch.manual_seed(seed)
        template = Template.parse(task.default_template)
        model = EncoderClassifier(backbone, SoftPrompt(torch.zeros(0, backbone.hidden_size)), template, task.labels,
                                  max_length=config.max_length)
        if method == "full+head":
            for param in backbone.model.parameters():
                param.requires_grad_(True)
            backbone.autocast_dtype = dtype
        save = _save_trainable
    result = sp.train(config, backbone=backbone, task=task, model=model, save=save, progress=False)
    test = evaluate(result.model, task.test, label_field=task.label_field, limit=args.test_limit)
    trainable = sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    return {"data": data, "method": method, "seed": seed, "accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
            "test_n": test["n"], "best_validation": result.best_validation["accuracy"], "trainable_params": trainable,
            "file_bytes": result.prompt_path.stat().st_size, "train_seconds": result.train_seconds}


def _save_trainable(folder: Path, model, extra: dict) -> Path:
    from safetensors.torch import save_file

    from softprompt.formats import atomic_write

    tensors = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}
    return atomic_write(folder / "weights.safetensors", lambda tmp: save_file(tensors, tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--data", default="rotten_tomatoes,bbc_news")
    parser.add_argument("--methods", default="head,prompt+head,full+head")
    parser.add_argument("--eval-limit", type=int, default=300)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    started = time.perf_counter()
    runs = []
    for data in args.data.split(","):
        for method in args.methods.split(","):
            for seed in range(args.seeds):
                runs.append(run(args, data, method, seed))
                print(json.dumps(runs[-1]), flush=True)
    rows = []
    for data in args.data.split(","):
        for method in args.methods.split(","):
            mine = [r for r in runs if r["data"] == data and r["method"] == method]
            accs = [100 * r["accuracy"] for r in mine]
            rows.append({"data": data, "method": method, "accuracy": statistics.mean(accs),
                         "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "seeds": len(accs),
                         "trainable_params": mine[0]["trainable_params"], "file_bytes": mine[0]["file_bytes"],
                         "train_seconds": statistics.median(r["train_seconds"] for r in mine),
                         "test_n": mine[0]["test_n"]})
    backbone_params = sum(p.numel() for p in sp.load_backbone(MODEL).model.parameters())
    lines = [f"### {MODEL} ({backbone_params / 1e6:.1f}M parameters), {args.steps} steps x 16 rows, "
             f"{args.seeds} seed(s), test accuracy on the first {args.test_limit} test rows",
             "", "| data | method | test accuracy % | trainable params (% of backbone) | artefact | median train s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['method']} | {r['accuracy']:.1f} ± {r['accuracy_std']:.1f} | "
                     f"{r['trainable_params']:,} ({100 * r['trainable_params'] / backbone_params:.3f}%) | "
                     f"{r['file_bytes'] / 1024:,.0f} KB | {r['train_seconds']:.0f} |")
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "encoders.json").write_text(json.dumps({"model": MODEL, "steps": args.steps, "runs": runs,
                                                        "rows": rows, "settings": SETTINGS,
                                                        "minutes": (time.perf_counter() - started) / 60}, indent=1))
    (RESULTS / "encoders.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
