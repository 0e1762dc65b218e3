"""Many tasks, one prompt family, measured: multilingual transfer, prompt transfer (SPoT), multitask prompts (MPT).

Three parts (each in one process on one loaded backbone, smollm2-135m by default):

- `multilingual`: a topic prompt trained on `chatterbot-english` is evaluated as is on the other languages' test
  sets, next to the hand-written template (zero-shot) and a prompt trained in that language at the same budget.
- `spot`: source prompts for rotten_tomatoes, bbc_news, chatterbot-english and chatterbot-language; the target
  (a few-shot rotten_tomatoes, K per class) trains from each source prompt (`--init-from`) and from the usual
  inits; per init: validation accuracy at each evaluation (convergence) and at the end, and each source's
  task similarity (cosine of mean prompt vectors, and of the flattened prompts) with the target prompt
  trained from the label init.
- `mpt`: stage 1 on bbc_news + chatterbot-english + chatterbot-language, plain and distilled from single-task
  teacher prompts (`--mpt-teachers`; `--no-distill` skips it); stage 2 on rotten_tomatoes with 16, 64 and 256
  examples per class, training only the task factor, vs single-task prompt tuning from the label init at the
  same steps; trainable parameters per task (count and % of the backbone).

Writes benchmarks/quality/results/transfer_<part>.{json,md} (and a plot for `multilingual` and `spot`).

    python benchmarks/quality/transfer.py --part multilingual|spot|mpt|all [--steps N] [--quick]

Takes ~1.5 h on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import softprompt as sp
from softprompt.evaluation import evaluate
from softprompt.formats import read_prompt_tensors
from softprompt.training.loop import train_multitask
from softprompt.training.baselines import build_method

RESULTS = Path(__file__).parent / "results"
WORK = Path("runs/bench_transfer")
LANGUAGES = ("chinese", "dutch", "german", "italian", "japanese", "korean", "persian", "traditionalchinese",
             "turkish", "ukrainian", "french", "portuguese", "spanish", "indonesian")


def _config(args, name: str, data: str, **kw) -> sp.TrainConfig:
    base = dict(model=args.model, data=data, output=str(WORK / name), max_steps=args.steps,
                eval_every=max(1, args.steps // 4), eval_limit=args.eval_limit, batch_size=16,
                num_virtual_tokens=20, checkpoint_every=0, precision=args.precision)
    base.update(kw)
    return sp.TrainConfig(**base)


def _accuracy(model, task, limit: int) -> float:
    return evaluate(model, task.test, label_field=task.label_field, limit=limit)["accuracy"]


def multilingual(args, backbone) -> dict:
    english = sp.load_task("chatterbot-english")
    trained = sp.train(_config(args, "ml-english", "chatterbot-english"), backbone=backbone, task=english,
                       progress=False)
    zeroshot = sp.build_prompted_model(_config(args, "unused", "chatterbot-english"), backbone, english)
    rows = []
    for language in ("english",) + tuple(args.languages):
        task = sp.load_task(f"chatterbot-{language}")
        if len(task.labels) < 4 or len(task.test) < 20:
            continue
        own = trained if language == "english" else sp.train(
            _config(args, f"ml-{language}", f"chatterbot-{language}"), backbone=backbone, task=task, progress=False)
        plain = build_method("zeroshot", _config(args, "unused", f"chatterbot-{language}"),
                                                 backbone, task).model
        rows.append({"language": language, "topics": len(task.labels), "test_n": len(task.test),
                     "train_n": len(task.train), "zeroshot": _accuracy(plain, task, args.test_limit),
                     "english_prompt": _accuracy(trained.model, task, args.test_limit),
                     "in_language_prompt": _accuracy(own.model, task, args.test_limit),
                     "chance": max(sum(r["label"] == label for r in task.test) for label in task.labels)
                     / len(task.test)})
        print(json.dumps(rows[-1]), flush=True)
    del zeroshot
    lines = ["| language | topics | train / test | majority class | zero-shot template | English prompt | "
             "in-language prompt |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['language']} | {r['topics']} | {r['train_n']} / {r['test_n']} | {100 * r['chance']:.1f} | "
                     f"{100 * r['zeroshot']:.1f} | {100 * r['english_prompt']:.1f} | "
                     f"{100 * r['in_language_prompt']:.1f} |")
    _plot_languages(rows, args.out_dir / "transfer_multilingual.png")
    return {"rows": rows, "table": "\n".join(lines)}


def _plot_languages(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows)), 4))
    x = range(len(rows))
    for offset, key, label in ((-0.27, "zeroshot", "zero-shot template"), (0, "english_prompt", "English prompt"),
                               (0.27, "in_language_prompt", "in-language prompt")):
        ax.bar([i + offset for i in x], [100 * r[key] for r in rows], width=0.27, label=label)
    ax.scatter(list(x), [100 * r["chance"] for r in rows], marker="_", color="black", s=200, label="majority class")
    ax.set_xticks(list(x), [r["language"] for r in rows], rotation=40, ha="right")
    ax.set_ylabel("test accuracy %")
    ax.set_title("topic prompt trained on English chat messages, evaluated per language")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_spot(rows, path: Path) -> None:
    """Left: validation accuracy while training, one line per init. Right: transfer gain vs task similarity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, gains) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {}
    for r in rows:
        style = "-" if r["init"].startswith("from ") else "--"
        colors[r["init"]] = curves.plot([s for s, _ in r["curve"]], [100 * a for _, a in r["curve"]], style, marker="o", ms=3,
                    label=r["init"])[0].get_color()
    curves.set_xlabel("step")
    curves.set_ylabel("validation accuracy %")
    curves.set_title("target: few-shot rotten_tomatoes, by prompt init")
    curves.legend(fontsize=7)
    base = next(r for r in rows if r["init"] == "labels")["test"]
    for r in rows:
        if "mean_cosine" in r:
            gains.scatter(r["mean_cosine"], 100 * (r["test"] - base), color=colors[r["init"]])
            gains.annotate(r["init"][5:], (r["mean_cosine"], 100 * (r["test"] - base)), fontsize=7,
                           xytext=(4, 4), textcoords="offset points")
    gains.axhline(0, color="grey", lw=0.8)
    gains.set_xlabel("task similarity: cosine of mean source / target prompt vectors")
    gains.set_ylabel("test gain vs labels init (points)")
    gains.set_title("transfer gain vs task similarity")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _flat_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def spot(args, backbone) -> dict:
    sources = {}
    for data in ("rotten_tomatoes", "bbc_news", "chatterbot-english", "chatterbot-language"):
        result = sp.train(_config(args, f"spot-src-{data}", data), backbone=backbone, progress=False)
        sources[data] = result.prompt_path
    target = sp.load_task("rotten_tomatoes")
    runs = {}
    for init in ("random", "vocab", "labels"):
        runs[init] = sp.train(_config(args, f"spot-{init}", "rotten_tomatoes", init=init,
                                      train_per_class=args.per_class), backbone=backbone, task=target, progress=False)
    for data, path in sources.items():
        runs[f"from {data}"] = sp.train(_config(args, f"spot-from-{data}", "rotten_tomatoes", init_from=str(path),
                                                train_per_class=args.per_class), backbone=backbone, task=target,
                                        progress=False)
    reference = read_prompt_tensors(runs["labels"].prompt_path)[0]["prompt_embeddings"]
    rows = []
    for name, result in runs.items():
        curve = [(r["step"], r["accuracy"]) for r in result.history if r["split"] == "validation"]
        row = {"init": name, "curve": curve, "best_validation": result.best_validation["accuracy"],
               "test": _accuracy(result.model, target, args.test_limit)}
        if name.startswith("from "):
            source = read_prompt_tensors(sources[name[5:]])[0]["prompt_embeddings"]
            row["mean_cosine"] = float(F.cosine_similarity(source.mean(0), reference.mean(0), dim=0))
            row["flat_cosine"] = _flat_cosine(source, reference)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    first_eval = rows[0]["curve"][0][0] if rows[0]["curve"] else 0
    base = next(r for r in rows if r["init"] == "labels")
    lines = [f"| init | validation at step {first_eval} | best validation | test | gain vs labels init (test) | "
             "task similarity (mean / flat cosine) |", "|---|---|---|---|---|---|"]
    for r in rows:
        sim = f"{r['mean_cosine']:.2f} / {r['flat_cosine']:.2f}" if "mean_cosine" in r else "—"
        lines.append(f"| {r['init']} | {100 * r['curve'][0][1]:.1f} | {100 * r['best_validation']:.1f} | "
                     f"{100 * r['test']:.1f} | {100 * (r['test'] - base['test']):+.1f} | {sim} |")
    _plot_spot(rows, args.out_dir / "transfer_spot.png")
    return {"rows": rows, "per_class": args.per_class, "table": "\n".join(lines)}


MPT_SOURCES = {"bbc": "bbc_news", "chat": "chatterbot-english", "lang": "chatterbot-language"}


def mpt(args, backbone) -> dict:
    tasks = ",".join(f"{k}={v}" for k, v in MPT_SOURCES.items())
    stage1 = _config(args, "mpt-stage1", None, method="multitask", tasks=tasks, max_steps=args.steps * 2)
    stages = {}
    started = time.perf_counter()
    stages["MPT"] = (train_multitask(stage1, backbone=backbone, progress=False), time.perf_counter() - started)
    teachers = {}
    if args.distill:  # single-task teacher prompts, then the same stage 1 distilled from them
        for name, data in MPT_SOURCES.items():
            teachers[name] = sp.train(_config(args, f"mpt-teacher-{name}", data), backbone=backbone,
                                      progress=False)
        started = time.perf_counter()
        distilled = train_multitask(stage1.replace(output=str(WORK / "mpt-stage1-distilled"), mpt_teachers=",".join(
            f"{k}={v.prompt_path}" for k, v in teachers.items())), backbone=backbone, progress=False)
        stages["MPT distilled"] = (distilled, time.perf_counter() - started)
    target = sp.load_task("rotten_tomatoes")
    params = sum(p.numel() for p in backbone.model.parameters())
    methods = [(f"{label} (task factor only)", {"init_from": str(result.shared_path)})
               for label, (result, _) in stages.items()]
    methods.append(("prompt tuning from scratch (labels init)", {"init": "labels"}))
    rows = []
    for k in args.shots:
        for name, extra in methods:
            scores = []
            for seed in range(args.seeds):
                tag = name.split(" (")[0].replace(" ", "-")
                result = sp.train(_config(args, f"mpt-{k}-{seed}-{tag}", "rotten_tomatoes",
                                          train_per_class=k, seed=seed, **extra), backbone=backbone, task=target,
                                  progress=False)
                scores.append(_accuracy(result.model, target, args.test_limit))
                trainable = read_prompt_tensors(result.prompt_path)[1]["training"]["trainable_params"]
            rows.append({"per_class": k, "method": name, "trainable_params": trainable,
                         "trainable_percent": 100 * trainable / params, "accuracy": statistics.mean(scores),
                         "accuracy_std": statistics.stdev(scores) if len(scores) > 1 else 0.0, "seeds": len(scores)})
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| examples per class | method | trainable params (% of backbone) | test accuracy |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['per_class']} | {r['method']} | {r['trainable_params']:,} ({r['trainable_percent']:.4f}%) | "
                     f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f} (n={r['seeds']}) |")
    val = " | ".join(f"{t}" for t in MPT_SOURCES)
    lines += ["", f"Stage 1 ({stage1.max_steps} steps, {stage1.batch_size} rows a step over {len(MPT_SOURCES)} tasks), "
              "best validation accuracy per source task:", "",
              f"| stage 1 | {val} | seconds |", "|---|" + "---|" * len(MPT_SOURCES) + "---|"]
    for label, (result, seconds) in stages.items():
        lines.append(f"| {label} | " + " | ".join(f"{100 * result.best_validation[t]['accuracy']:.1f}"
                                                for t in MPT_SOURCES) + f" | {seconds:.0f} |")
    for name, result in teachers.items():
        lines.append(f"| single-task teacher {name} ({args.steps} steps) | " + " | ".join(
            f"{100 * result.best_validation['accuracy']:.1f}" if t == name else "—" for t in MPT_SOURCES)
            + f" | {result.train_seconds:.0f} |")
    return {"rows": rows,
            "stage1": {label: {"tasks": stage1.mpt.tasks, "steps": result.steps, "seconds": seconds,
                               "trainable_params": result.trainable_params, "validation": result.best_validation}
                       for label, (result, seconds) in stages.items()},
            "teachers": {name: {"steps": r.steps, "validation": r.best_validation, "prompt": str(r.prompt_path)}
                         for name, r in teachers.items()},
            "table": "\n".join(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="all", choices=("multilingual", "spot", "mpt", "all"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=64, help="spot: target examples per class")
    parser.add_argument("--shots", default="16,64,256", help="mpt: examples per class")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--eval-limit", type=int, default=300)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--languages", default=",".join(LANGUAGES),
                        help="multilingual: the languages besides English (each trains its own prompt too)")
    parser.add_argument("--no-distill", dest="distill", action="store_false",
                        help="mpt: skip the stage 1 distilled from single-task teacher prompts")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 steps, 1 seed, small evaluations")
    args = parser.parse_args()
    args.shots = [int(s) for s in args.shots.split(",")]
    args.languages = [x for x in args.languages.split(",") if x]
    if args.quick:
        args.steps, args.seeds, args.eval_limit, args.test_limit, args.shots = 2, 1, 20, 20, [16]
    backbone = sp.load_backbone(args.model, dtype=args.precision)
    parts = ("multilingual", "spot", "mpt") if args.part == "all" else (args.part,)
    target_dir = WORK / "quick" if args.quick else RESULTS
    target_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir = target_dir
    for part in parts:
        started = time.perf_counter()
        out = {"multilingual": multilingual, "spot": spot, "mpt": mpt}[part](args, backbone)
        out.update({"model": args.model, "steps": args.steps, "minutes": (time.perf_counter() - started) / 60})
        (target_dir / f"transfer_{part}.json").write_text(json.dumps(out, indent=1, default=str))
        (target_dir / f"transfer_{part}.md").write_text(f"### {part} ({args.model}, {args.steps} steps x batch 16)\n\n"
                                                        + out["table"] + "\n")
        print(out["table"], flush=True)


if __name__ == "__main__":
    main()
