"""Visual prompt tuning, measured on a ViT we pre-train ourselves (no pretrained ViT ships offline).

1. Pre-train a small ViT (28x28 grey images, 4x4 patches, d=96, 4 layers) on Fashion-MNIST classes 0-4
   (t-shirt, trouser, pullover, dress, coat); save it as a Hugging Face folder and freeze it.
2. Adapt the frozen backbone to the unseen classes 5-9 (sandal, shirt, sneaker, bag, ankle-boot), same steps,
   batch and data order for each method:
   - `linear probe`: a linear head on the frozen final [CLS] state;
   - `VPT-shallow`: 10 prompt tokens at the input + the head;
   - `VPT-deep`: 10 prompt tokens before every layer + the head;
   - `full fine-tuning`: every backbone weight + the head.
   Reported at two data budgets: all 27,000 training images, and 20 images per class (few-shot).

Writes benchmarks/quality/results/vpt_fashion.{json,md}. Needs Debian's `dataset-fashion-mnist` (apt-get install).

    python benchmarks/quality/vpt_fashion.py [--pretrain-epochs 4] [--steps 300] [--seeds 2]

Takes ~15 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

import softprompt as sp
from softprompt.evaluation import evaluate
from softprompt.kinds.vision.vpt import VPTModel
from softprompt.prompts import SoftPrompt

RESULTS = Path(__file__).parent / "results"
WORK = Path("runs/bench_vpt")
MEAN, STD = 0.286, 0.353  # Fashion-MNIST pixel statistics
LR = {"linear probe": dict(lr=1e-2, head_lr=1e-2), "VPT-shallow": dict(lr=3e-2, head_lr=1e-2),
      "VPT-deep": dict(lr=3e-2, head_lr=1e-2), "full fine-tuning": dict(lr=3e-4, head_lr=1e-2)}


def pretrain(args) -> tuple[Path, dict]:
    from transformers import ViTConfig, ViTForImageClassification

    folder = WORK / "vit-fashion-0-4"
    report = WORK / "pretrain.json"
    if (folder / "config.json").is_file() and report.is_file():
        return folder, json.loads(report.read_text())
    task = sp.load_task("fashion-mnist-0-4")
    labels = task.labels
    torch.manual_seed(0)
    config = ViTConfig(image_size=28, patch_size=4, num_channels=1, hidden_size=96, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=192, num_labels=len(labels),
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = ViTForImageClassification(config)
    images = torch.stack([r["image"] for r in task.train]).float().div(255).sub(MEAN).div(STD)
    targets = torch.tensor([labels.index(r["label"]) for r in task.train])
    steps_per_epoch = math.ceil(len(images) / args.pretrain_batch)
    total = steps_per_epoch * args.pretrain_epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=total, pct_start=0.1)
    started = time.perf_counter()
    model.train()
    step = 0
    for epoch in range(args.pretrain_epochs):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(order), args.pretrain_batch):
            index = order[start:start + args.pretrain_batch]
            batch = images[index]
            flip = torch.rand(len(batch)) < 0.5  # horizontal flips: the only augmentation
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(pixel_values=batch).logits.float(), targets[index])
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % 100 == 0:
                print(f"pretrain step {step}/{total} loss {loss.item():.3f}", flush=True)
    model.eval()
    test = torch.stack([r["image"] for r in task.test]).float().div(255).sub(MEAN).div(STD)
    gold = torch.tensor([labels.index(r["label"]) for r in task.test])
    with torch.no_grad():
        predicted = torch.cat([model(pixel_values=test[i:i + 500]).logits.argmax(-1) for i in range(0, len(test), 500)])
    result = {"classes": list(labels), "epochs": args.pretrain_epochs, "steps": total,
              "seconds": time.perf_counter() - started, "test_accuracy": (predicted == gold).float().mean().item(),
              "parameters": sum(p.numel() for p in model.vit.parameters())}
    model.vit.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [MEAN], "image_std": [STD]}))
    report.write_text(json.dumps(result, indent=1))
    return folder, result


def adapt(args, folder: Path, method: str, per_class: int | None, seed: int) -> dict:
    full = method == "full fine-tuning"
    backbone = sp.load_backbone(str(folder), dtype="fp32")
    task = sp.load_task("fashion-mnist-5-9")
    tokens = 0 if method in ("linear probe", "full fine-tuning") else args.tokens
    deep = method == "VPT-deep"
    torch.manual_seed(seed)
    prompt = (VPTModel.initial_prompt(backbone, tokens, deep=deep, generator=torch.Generator().manual_seed(seed))
              if tokens else SoftPrompt(torch.zeros(0, backbone.hidden_size)))
    model = VPTModel(backbone, prompt, task.labels, deep=deep)
    if full:
        for param in backbone.model.parameters():
            param.requires_grad_(True)
    name = f"{method.replace(' ', '-')}-{per_class or 'all'}-{seed}"
    config = sp.TrainConfig(model=str(folder), data="fashion-mnist-5-9", output=str(WORK / name), seed=seed,
                            max_steps=args.steps, batch_size=args.batch_size, eval_every=max(1, args.steps // 3),
                            eval_limit=1000, checkpoint_every=0, precision="fp32", train_per_class=per_class,
                            init="random", **LR[method])
    save = _save_trainable if full else None
    result = sp.train(config, backbone=backbone, task=task, model=model, save=save, progress=False)
    test = evaluate(result.model, task.test, label_field="label", batch_size=250)
    return {"method": method, "per_class": per_class, "seed": seed, "accuracy": test["accuracy"],
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "file_bytes": result.prompt_path.stat().st_size, "train_seconds": result.train_seconds,
            "best_validation": result.best_validation["accuracy"]}


def _save_trainable(folder: Path, model, extra: dict) -> Path:
    from safetensors.torch import save_file

    from softprompt.formats import atomic_write

    tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    return atomic_write(folder / "weights.safetensors", lambda tmp: save_file(tensors, tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--pretrain-batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--few-shot", type=int, default=20, help="images per class of the few-shot budget")
    args = parser.parse_args()
    started = time.perf_counter()
    folder, pre = pretrain(args)
    print(json.dumps({"pretrain": pre}), flush=True)
    runs = []
    for per_class in (None, args.few_shot):
        for method in LR:
            for seed in range(args.seeds):
                runs.append(adapt(args, folder, method, per_class, seed))
                print(json.dumps(runs[-1]), flush=True)
    backbone_params = pre["parameters"]
    lines = [f"### Frozen ViT pre-trained on Fashion-MNIST 0-4 ({backbone_params:,} parameters, {pre['epochs']} epochs, "
             f"test accuracy on 0-4: {100 * pre['test_accuracy']:.1f}%), adapted to classes 5-9",
             "", f"{args.steps} steps x {args.batch_size} images, {args.seeds} seed(s), test accuracy on all 5,000 test "
             "images of classes 5-9.", "",
             "| training data | method | test accuracy % | trainable params (% of backbone) | artefact | median train s |",
             "|---|---|---|---|---|---|"]
    rows = []
    for per_class in (None, args.few_shot):
        for method in LR:
            mine = [r for r in runs if r["method"] == method and r["per_class"] == per_class]
            accs = [100 * r["accuracy"] for r in mine]
            row = {"per_class": per_class, "method": method, "accuracy": statistics.mean(accs),
                   "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                   "trainable_params": mine[0]["trainable_params"], "file_bytes": mine[0]["file_bytes"],
                   "train_seconds": statistics.median(r["train_seconds"] for r in mine)}
            rows.append(row)
            data = "all 27,000" if per_class is None else f"{per_class} per class"
            lines.append(f"| {data} | {method} | {row['accuracy']:.1f} ± {row['accuracy_std']:.1f} | "
                         f"{row['trainable_params']:,} ({100 * row['trainable_params'] / backbone_params:.2f}%) | "
                         f"{row['file_bytes'] / 1024:,.0f} KB | {row['train_seconds']:.0f} |")
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vpt_fashion.json").write_text(json.dumps({"pretrain": pre, "runs": runs, "rows": rows, "lr": LR,
                                                           "steps": args.steps, "batch_size": args.batch_size,
                                                           "minutes": (time.perf_counter() - started) / 60}, indent=1))
    (RESULTS / "vpt_fashion.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
