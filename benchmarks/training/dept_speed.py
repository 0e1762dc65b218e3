"""DePT's speed next to a 20-token prompt at the same parameter count: training step time and serving latency.

Side by side in one process on smollm2-135m and rotten_tomatoes (real reviews, batch 16, the same batches for
every method), the methods taking turns every round so drift of the machine's speed hits all alike:
- training step (forward + backward + AdamW step, median of the rounds) of a plain 20-token prompt (11,520
  numbers), a residual prompt (the same 20 tokens through its bottleneck MLP while training), DePT (10 tokens +
  the rank its parameter budget allows, at most the 20-token prompt's count) and full fine-tuning (fp32 master
  weights, bf16 autocast, as `softprompt compare` trains it: the reference for "equal wall-clock");
- serving: each trained prompt saved and loaded back as `softprompt serve` loads it (residual folded into a plain
  prompt), timed through the server's `run_batch` at 1 request and at 8 requests of one prompt, next to the bare
  backbone (the zero-shot template).
Writes benchmarks/training/results/dept_speed.{json,md}.

    python benchmarks/training/dept_speed.py [--rounds 12] [--quick]

Takes ~5 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import softprompt as sp
from softprompt.formats import atomic_write
from softprompt.inference.batch import Request, run_batch
from softprompt.methods import MethodName
from softprompt.training.baselines import build_method, trainable_count

RESULTS = Path(__file__).parent / "results"
MODEL, DATA = "smollm2-135m", "rotten_tomatoes"
PROMPT_METHODS = (MethodName.PROMPT, MethodName.RESIDUAL, MethodName.DEPT)


def _config(output: str) -> sp.TrainConfig:
    return sp.TrainConfig(model=MODEL, data=DATA, output=output, seed=0, checkpoint_every=0)


def _stepper(model: torch.nn.Module, autocast: torch.dtype | None):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)  # a small rate: the timing must not depend on where it goes

    def step(batch) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            loss, _ = model.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="timed rounds (each: one step of every method)")
    parser.add_argument("--serve-rounds", type=int, default=40, help="timed serving rounds")
    parser.add_argument("--quick", action="store_true", help="2 rounds: a smoke run")
    args = parser.parse_args()
    rounds, serve_rounds = (2, 3) if args.quick else (args.rounds, args.serve_rounds)
    task = sp.load_task(DATA)
    backbone = sp.load_backbone(MODEL, dtype="auto")
    compute = backbone.model.dtype
    full_backbone = sp.load_backbone(MODEL, dtype=torch.float32)  # full fine-tuning changes its weights
    work = Path(tempfile.mkdtemp(prefix="dept_speed_"))
    models, steppers, params, lengths = {}, {}, {}, {}
    for method in PROMPT_METHODS:
        built = build_method(method, _config(str(work / method.value)), backbone, task)
        models[method] = built.model
        built.model.train()
        steppers[method] = _stepper(built.model, None)
        params[method] = trainable_count(built.model)
        lengths[method] = built.model.prompt.num_virtual_tokens
    full = build_method(MethodName.FULL, _config(str(work / "full")), full_backbone, task).model
    full.train()
    steppers[MethodName.FULL] = _stepper(full, compute if compute != torch.float32 else None)
    params[MethodName.FULL] = trainable_count(full)
    lengths[MethodName.FULL] = 0
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(task.train), generator=generator).tolist()
    batches = [[task.train[i] for i in order[start:start + 16]] for start in range(0, 16 * (rounds + 1), 16)]
    times: dict[MethodName, list[float]] = {m: [] for m in steppers}
    for index, rows in enumerate(batches):           # round 0 warms up every method
        for method, step in steppers.items():
            model = models.get(method, full)
            seconds = step(model.make_batch(rows))
            if index:
                times[method].append(seconds)
        print(f"round {index}: " + ", ".join(f"{m.value} {times[m][-1]:.3f}s" for m in times if times[m]), flush=True)
    del full, full_backbone, steppers

    # Serving: the files as `softprompt serve` loads them, through the server's batch path.
    served = {}
    for method, model in models.items():
        model.eval()
        path = sp.save_prompt(work / f"{method.value}.safetensors", model)
        served[method.value] = sp.load_prompted_model(path, backbone)
    served["bare"] = build_method(MethodName.ZEROSHOT, _config(str(work / "z")), backbone,
                                  task).model
    texts = [r["text"] for r in task.test[: 8 * (serve_rounds + 1)]]
    latency: dict[str, dict[int, list[float]]] = {name: {1: [], 8: []} for name in served}
    for index in range(serve_rounds + 1):
        for rows in (1, 8):
            chunk = texts[index * 8: index * 8 + rows]
            for name, model in served.items():
                started = time.perf_counter()
                run_batch(backbone, [Request(model, text) for text in chunk])
                if index:
                    latency[name][rows].append(1000 * (time.perf_counter() - started))
    prompt_step = statistics.median(times[MethodName.PROMPT])
    bare = {rows: statistics.median(latency["bare"][rows]) for rows in (1, 8)}
    out = {"model": MODEL, "data": DATA, "batch_size": 16, "rounds": rounds, "serve_rounds": serve_rounds,
           "threads": torch.get_num_threads(), "compute_dtype": str(compute), "cpu": platform.processor(),
           "date": time.strftime("%Y-%m-%d"), "training": [], "serving": []}
    for method, seconds in times.items():
        median = statistics.median(seconds)
        out["training"].append({"method": method.value, "virtual_tokens": lengths[method],
                                "trainable_params": params[method], "step_seconds": median,
                                "vs_prompt": median / prompt_step})
    for name, by_rows in latency.items():
        out["serving"].append({"method": name, **{f"ms_{rows}": statistics.median(by_rows[rows]) for rows in (1, 8)},
                               **{f"vs_bare_{rows}": statistics.median(by_rows[rows]) / bare[rows]
                                  for rows in (1, 8)}})
    RESULTS.mkdir(exist_ok=True)
    atomic_write(RESULTS / "dept_speed.json", lambda tmp: Path(tmp).write_text(json.dumps(out, indent=1)))
    lines = [f"{MODEL} on {DATA}, {compute} compute, {out['threads']} threads, {rounds} rounds in turns "
             f"(medians).", "",
             "| method | virtual tokens | trainable params | training step s (batch 16) | × prompt's |",
             "|---|---|---|---|---|"]
    for r in out["training"]:
        lines.append(f"| {r['method']} | {r['virtual_tokens']} | {r['trainable_params']:,} | "
                     f"{r['step_seconds']:.3f} | {r['vs_prompt']:.2f}× |")
    lines += ["", "| served file | 1 request ms | × bare | 8 requests ms | × bare |", "|---|---|---|---|---|"]
    for r in out["serving"]:
        lines.append(f"| {r['method']} | {r['ms_1']:.1f} | {r['vs_bare_1']:.2f}× | {r['ms_8']:.1f} | "
                     f"{r['vs_bare_8']:.2f}× |")
    atomic_write(RESULTS / "dept_speed.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
