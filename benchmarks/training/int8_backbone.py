"""A frozen backbone held in int8 (`--load-in int8`) against the same backbone in fp32: memory, training-step time
and accuracy of one prompt, side by side.

Each holding runs in its own process (its memory is its own), in turn: load the backbone (the bytes its weights
hold; the peak resident memory while loading, all of it and the part no file backs: fp32 weights are mapped
from the checkpoint and become resident as they are read), evaluate one prompt on the first `--test-limit` test
rows (the same rows, the same prompt: accuracy, how many predictions the two agree on, and the resident memory
after evaluation, when every weight has been read: the working set), then `--steps` training steps on the same
batches (median step time after one warm-up, peak resident memory above the working set), with gradient
checkpointing as `--gradient-checkpointing` says. The prompt is `--prompt` (one trained on `--model`), or else a
fresh one initialised from the label words (the same in both processes). Writes
benchmarks/training/results/int8_backbone.{json,md}.

    python benchmarks/training/int8_backbone.py [--prompt runs/.../prompt.safetensors] --gradient-checkpointing

Takes ~15 min on 2 CPU cores on qwen2.5-1.5b.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py, the shared helpers
from common import base_rss_mb, PeakRSS, rss_mb  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def worker(args) -> dict:

    import softprompt as sp

    start, start_anon = base_rss_mb(), rss_mb("RssAnon")
    started = time.perf_counter()
    # int8: the checkpoint loads in bf16, then each linear layer is converted
    with PeakRSS(start) as load_peak, PeakRSS(start_anon, "RssAnon") as load_peak_anon:
        backbone = sp.load_backbone(args.model, dtype=torch.float32,
                                    load_in=args.worker if args.worker != "fp32" else None)
    load_seconds = time.perf_counter() - started
    held, seen = 0, set()
    for tensor in [*backbone.model.parameters(), *backbone.model.buffers()]:
        if tensor.data_ptr() not in seen:  # a tied head is the input embedding
            seen.add(tensor.data_ptr())
            held += tensor.numel() * tensor.element_size()
    task = sp.load_task(args.data)
    if args.prompt:
        model = sp.load_prompted_model(args.prompt, backbone)
    else:
        model = sp.build_prompted_model(sp.TrainConfig(model=args.model, data=args.data, seed=0), backbone, task)
    rows = task.test[: args.test_limit]
    started = time.perf_counter()
    predicted = []
    with torch.no_grad():
        for s in range(0, len(rows), 16):
            chunk = rows[s:s + 16]
            batch = model.make_batch([{f: r[f] for f in model.input_fields} for r in chunk], label_field=None)
            predicted += model.class_scores(batch).argmax(-1).tolist()
    eval_seconds = time.perf_counter() - started
    labels = model.verbalizer.labels
    accuracy = sum(labels[p] == r[task.label_field] for p, r in zip(predicted, rows)) / len(rows)
    working_mb = base_rss_mb() - start

    if args.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    model.train()
    optimizer = torch.optim.AdamW(model.prompt.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(task.train), generator=generator).tolist()
    times = []
    before = base_rss_mb()
    with PeakRSS(before) as peak:
        for step in range(args.steps):
            batch_rows = [task.train[i] for i in order[step * args.batch_size:(step + 1) * args.batch_size]]
            started = time.perf_counter()
            loss, _ = model.loss(model.make_batch(batch_rows))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - started)
    return {"holding": args.worker, "load_seconds": load_seconds, "weights_mb": held / 2**20,
            "load_peak_mb": load_peak.mb, "load_peak_anon_mb": load_peak_anon.mb, "working_mb": working_mb,
            "resident_mb": rss_mb(), "accuracy": accuracy, "predicted": predicted, "test_n": len(rows),
            "eval_seconds": eval_seconds, "step_seconds": statistics.median(times[1:]), "step_times": times,
            "step_peak_mb": peak.mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", help="a prompt trained on --model (default: a fresh one from the label words)")
    parser.add_argument("--model", default="qwen2.5-1.5b")
    parser.add_argument("--data", default="rotten_tomatoes")
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--worker", choices=("fp32", "int8"))
    parser.add_argument("--report", action="store_true", help="only write the table again from the JSON")
    args = parser.parse_args()
    if args.report:
        report(json.loads((RESULTS / "int8_backbone.json").read_text()))
        return
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    sides = {}
    for holding in ("fp32", "int8"):
        cmd = [sys.executable, __file__, "--worker", holding] + sys.argv[1:]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            raise SystemExit(f"{holding}: failed\n{proc.stderr[-3000:]}")
        sides[holding] = json.loads(line[len("RESULT "):])
        r = sides[holding]
        print(f"{holding}: weights {r['weights_mb']:.0f} MB, working set {r['working_mb']:.0f} MB, "
              f"accuracy {100 * r['accuracy']:.1f}%, step {r['step_seconds']:.1f} s, step peak +{r['step_peak_mb']:.0f} MB", flush=True)
    a, b = sides["fp32"], sides["int8"]
    agree = sum(x == y for x, y in zip(a["predicted"], b["predicted"])) / len(a["predicted"])
    summary = {"model": args.model, "data": args.data, "prompt": args.prompt, "test_n": a["test_n"],
               "steps": args.steps, "batch_size": args.batch_size,
               "gradient_checkpointing": args.gradient_checkpointing, "threads": torch.get_num_threads(),
               "accuracy_points_moved": 100 * (b["accuracy"] - a["accuracy"]), "agreement": agree, "sides": sides}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "int8_backbone.json").write_text(json.dumps(summary, indent=1))
    report(summary)


def _needed_mb(side: dict) -> float:
    """The most memory the run needs at once: the working set plus a step's peak, or the loading peak of memory no
    file backs, whichever is higher (file pages read while loading can be dropped by the kernel; the working set's
    cannot without reading them again at every step)."""
    return max(side["working_mb"] + side["step_peak_mb"], side["load_peak_anon_mb"])


def report(summary: dict) -> None:
    """int8_backbone.md from the summary (also `--report`: again from the JSON)."""
    sides = summary["sides"]
    a, b = sides["fp32"], sides["int8"]
    ratios = {"weights": b["weights_mb"] / a["weights_mb"], "working set": b["working_mb"] / a["working_mb"],
              "memory needed": _needed_mb(b) / _needed_mb(a), "step time": b["step_seconds"] / a["step_seconds"],
              "evaluation time": b["eval_seconds"] / a["eval_seconds"]}
    rows = ["| backbone held in | weights MB | working set MB | + step peak MB | loading peak MB (not file-backed) | "
            "memory needed MB | test accuracy | eval s | step s (median) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in sides.items():
        rows.append(f"| {name} | {r['weights_mb']:.0f} | {r['working_mb']:.0f} | {r['step_peak_mb']:.0f} | "
                    f"{r['load_peak_mb']:.0f} ({r['load_peak_anon_mb']:.0f}) | {_needed_mb(r):.0f} | "
                    f"{100 * r['accuracy']:.1f}% (n={r['test_n']}) | {r['eval_seconds']:.0f} | "
                    f"{r['step_seconds']:.1f} |")
    text = (f"{summary['model']}, one prompt ({summary['prompt'] or 'fresh, from the label words'}) on the first "
            f"{a['test_n']} {summary['data']} test rows; {summary['steps']} training steps of batch "
            f"{summary['batch_size']}{', gradient checkpointing' if summary['gradient_checkpointing'] else ''}. "
            "Working set: resident after evaluation (every weight read). Memory needed: the working set plus a "
            "step's peak, or the loading peak no file backs, whichever is higher.\n\n" + "\n".join(rows)
            + "\n\nint8 / fp32: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
            + f"; accuracy moved {summary['accuracy_points_moved']:+.1f} points; the two agree on "
              f"{100 * summary['agreement']:.1f}% of the predictions.\n")
    (RESULTS / "int8_backbone.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
