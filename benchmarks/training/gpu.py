"""GPU check: training-step time and memory for smollm2-135m and gemma3-270m, and the card's bf16 matmul ceiling.

One short script for a machine with a CUDA GPU (a few minutes). Per backbone and setting it trains a 20-token
prefix prompt on rotten_tomatoes rows (batch 16 and 64, max length 128, bf16 backbone, fp32 prompt) for a few
steps and reports the median step time, examples/s, the peak memory PyTorch allocated, and what
`softprompt train --dry-run` predicts for the same settings -- with and without gradient checkpointing.
Writes benchmarks/training/results/gpu_<card>.json and .md. With `--engines torch,vllm` it then serves on the card
with both engines side by side (benchmarks/serving/vllm_engine.py --device cuda).

    python benchmarks/training/gpu.py [--steps 10] [--engines torch,vllm]

Takes ~5 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
MODELS = ("smollm2-135m", "gemma3-270m")


def matmul_tflops(size: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e12


def measure(model_name: str, batch_size: int, checkpointing: bool, steps: int) -> dict:
    import softprompt as sp
    from softprompt.tools.memory import estimate_training_memory

    config = sp.TrainConfig(model=model_name, data="rotten_tomatoes", batch_size=batch_size, max_length=128,
                            num_virtual_tokens=20, device="cuda", precision="bf16",
                            gradient_checkpointing=checkpointing)
    estimate = estimate_training_memory(config)
    task = sp.load_task("rotten_tomatoes")
    backbone = sp.load_backbone(model_name, dtype=torch.bfloat16, device="cuda")
    if checkpointing:
        backbone.enable_gradient_checkpointing()
    model = sp.build_prompted_model(config, backbone, task)
    model.train()
    optimizer = torch.optim.AdamW(model.prompt.parameters(), lr=3e-2)
    rows = sorted(task.train, key=lambda r: -len(r["text"]))[:batch_size]  # the longest rows: the worst case
    batch = {k: v.to("cuda") for k, v in model.make_batch(rows).items()}
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for step in range(steps + 2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss, _ = model.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated()
    step_s = statistics.median(times)
    result = {"model": model_name, "batch_size": batch_size, "gradient_checkpointing": checkpointing,
              "tokens": int(batch["input_ids"].shape[1]) + 20, "step_s": step_s, "examples_per_s": batch_size / step_s,
              "peak_gib": peak / 2 ** 30, "weights_gib": base / 2 ** 30,
              "dry_run_gib": estimate.total / 2 ** 30, "loss": float(loss)}
    del model, backbone, optimizer, batch
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--engines", default="", help="also serve on the GPU with these engines, side by side "
                                                      "(torch,vllm: benchmarks/serving/vllm_engine.py --device cuda; "
                                                      "vllm needs a CUDA vLLM in .venv-vllm)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/training/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        sys.exit(2)
    card = torch.cuda.get_device_name()
    rows = []
    for model_name in MODELS:
        for batch_size in (16, 64):
            for checkpointing in (False, True):
                rows.append(measure(model_name, batch_size, checkpointing, args.steps))
                print(json.dumps(rows[-1]), flush=True)
    out = {"card": card, "torch": torch.__version__, "bf16_matmul_tflops": matmul_tflops(), "rows": rows}
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"gpu_{slug}.json").write_text(json.dumps(out, indent=1))
    lines = [f"### {card} (torch {torch.__version__}): bf16 matmul {out['bf16_matmul_tflops']:.0f} TFLOP/s", "",
             "| backbone | batch | grad. ckpt | tokens | step ms | examples/s | peak GiB | dry-run GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch_size']} | {'on' if r['gradient_checkpointing'] else 'off'} | "
                     f"{r['tokens']} | {1000 * r['step_s']:.1f} | {r['examples_per_s']:.0f} | {r['peak_gib']:.2f} | "
                     f"{r['dry_run_gib']:.2f} |")
    (RESULTS / f"gpu_{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.engines:  # serving on the card: both engines, one run (results in benchmarks/serving/results/)
        subprocess.run([sys.executable, str(Path(__file__).parents[1] / "serving" / "vllm_engine.py"), "--device",
                        "cuda", "--engines", args.engines, "--name", f"vllm_engine_{slug}"], check=True)


if __name__ == "__main__":
    main()
