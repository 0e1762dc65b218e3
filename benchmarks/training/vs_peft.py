"""softprompt vs Hugging Face PEFT prompt tuning, side by side, against the machine's matmul ceiling.

One run, one process tree: each side trains and serves in its own worker process (so peak RSS is its own), on
the same backbone (`--model`, default smollm2-135m), data (rotten_tomatoes), prompt length, init text, batch size,
max length, learning rate, steps, seed and batches. Sides:

- `peft-fp32`: PEFT `PromptTuningConfig` (text init) on the model in fp32 — how users usually run it on CPU;
- `peft-bf16`: the same with the model loaded in bf16;
- `softprompt`: our defaults (prefix placement, bf16 autocast with fp32 master prompt, answer-only logits, and
  `--compile auto`, which compiles one decoder block for every layer in a run of 100+ steps such as a default
  one-epoch run; this bench's 60 steps are timed the same way). The compile runs against an empty inductor cache
  (`compile_seconds`, cold) and again in a fresh process against the cache it filled (`warm_compile_seconds`);
- `softprompt-eager`: the same with `--compile off`;
- `softprompt-suffix`: suffix placement, where the input columns run once without gradients (frozen-input split;
  eager: `--compile auto` leaves a step that runs with a key/value cache alone).

Reported per side: median training step time (warm-up excluded), tokens/s, peak RSS, test accuracy after the
same steps; classification throughput (batch 32), single-request latency, greedy generation latency (8 new
tokens); executed matmul FLOPs per step and the fraction of the measured matmul ceiling (fp32 for fp32 sides,
bf16 for bf16 sides). Writes benchmarks/training/results/vs_peft.json and vs_peft.md (`--name`).

    python benchmarks/training/vs_peft.py [--steps 60] [--sides peft-fp32,...] [--merge]
    python benchmarks/training/vs_peft.py --model qwen2.5-1.5b --name vs_peft_1.5b --steps 8 --warmup 2 --batch-size 8 \
        --sides peft-fp32,softprompt-eager --test-limit 64 --throughput-examples 32

Takes ~25 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py, the shared helpers
from common import matmul_gflops  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TEMPLATE = "Review: {text}\nSentiment: {label}"
INIT_TEXT = "Classify the sentiment of this movie review as positive or negative."
SIDES = ("peft-fp32", "peft-bf16", "softprompt", "softprompt-eager", "softprompt-suffix")


# ---- the ceiling ----------------------------------------------------------------------------------------------
def step_flops(config, batch: int, seq: int, answer_positions: int, frozen_columns: int = 0,
               full_logits: bool = False) -> float:
    """Executed matmul FLOPs of one training step on a frozen decoder (no weight gradients: the backward
    computes input gradients only, as many FLOPs as the forward)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", d // heads)
    linear = layers * (d * heads * head_dim + 2 * d * kv_heads * head_dim + heads * head_dim * d
                       + 3 * d * config.intermediate_size)
    trained = seq - frozen_columns
    flops = 2 * linear * batch * frozen_columns + 4 * linear * batch * trained
    attention = 4 * batch * heads * head_dim * layers  # x T^2: QK^T and AV
    flops += attention * (frozen_columns ** 2 + 3 * (seq ** 2 - frozen_columns ** 2))
    head = 2 * config.vocab_size * d * batch * (seq if full_logits else answer_positions)
    return flops + 2 * head


# ---- workers --------------------------------------------------------------------------------------------------
def _batches(rows, batch_size, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(rows), generator=generator).tolist()
    return [[rows[i] for i in order[s * batch_size:(s + 1) * batch_size]] for s in range(steps)]


def _timed(fn, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def worker_softprompt(args, placement: str, compiled: bool = False) -> dict:
    import softprompt as sp

    task = sp.load_task("rotten_tomatoes")
    backbone = sp.load_backbone(args.model, dtype="auto")
    compile_seconds = None
    if compiled:
        started = time.perf_counter()
        print(backbone.compile_for_training(), file=sys.stderr, flush=True)
        compile_seconds = time.perf_counter() - started
    config = sp.TrainConfig(data="rotten_tomatoes", output="/tmp/unused", num_virtual_tokens=args.tokens,
                            placement=placement, template=TEMPLATE, init="text", init_text=INIT_TEXT,
                            max_length=args.max_length + args.tokens, seed=args.seed)
    model = sp.build_prompted_model(config, backbone, task)
    model.train()
    optimizer = torch.optim.AdamW(model.prompt.parameters(), lr=args.lr)
    step_times, tokens, frozen = [], [], []
    for rows in _batches(task.train, args.batch_size, args.steps, args.seed):
        started = time.perf_counter()
        batch = model.make_batch(rows)
        loss, _ = model.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - started)
        tokens.append(batch["input_ids"].shape)
        frozen.append(model._frozen_columns(batch["soft_index"]) if model.split_frozen_input else 0)
    model.eval()
    test = task.test[: args.test_limit]
    accuracy = sp.evaluate(model, test)["accuracy"]
    texts = [r["text"] for r in test]
    throughput_rows = [{"text": t} for t in texts[:args.throughput_examples]]

    def classify_all():
        for s in range(0, len(throughput_rows), 32):
            with torch.no_grad():
                model.class_scores(model.make_batch(throughput_rows[s:s + 32], label_field=None))

    classify_seconds = _timed(classify_all, 2)
    single = _timed(lambda: model.classify([texts[0]]), 10)
    generation = _timed(lambda: sp.generate(model, [{"text": texts[0]}], max_new_tokens=8), 5)
    sample = sp.generate(model, [{"text": texts[0]}], max_new_tokens=8)[0]
    return {**_summary(args, step_times, tokens, accuracy, classify_seconds, single, generation, sample,
                       backbone.model.config, frozen, str(backbone.dtype), full_logits=False),
            "compile_seconds": compile_seconds}


def worker_compile_only(args) -> dict:
    """The compile of the decoder block alone, as a fresh process after a run meets it (inductor's disk cache)."""
    import softprompt as sp

    backbone = sp.load_backbone(args.model, dtype="auto")
    started = time.perf_counter()
    line = backbone.compile_for_training()
    return {"compile_seconds": time.perf_counter() - started, "line": line}


def worker_peft(args, dtype: torch.dtype) -> dict:
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import softprompt as sp
    from softprompt.hub import builtin_backbone_dir

    folder = str(builtin_backbone_dir(args.model))
    task = sp.load_task("rotten_tomatoes")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    peft_config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, prompt_tuning_init=PromptTuningInit.TEXT,
                                     prompt_tuning_init_text=INIT_TEXT, num_virtual_tokens=args.tokens,
                                     tokenizer_name_or_path=folder)
    model = get_peft_model(base, peft_config)
    label_ids = [tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in task.labels]

    def prompt_text(row):
        text_ids = tokenizer(row["text"], add_special_tokens=False).input_ids[: args.max_length - 8]
        return "Review: " + tokenizer.decode(text_ids) + "\nSentiment:"

    def encode(rows, with_label):
        texts = [prompt_text(r) + (" " + r["label"] if with_label else "") for r in rows]
        tokenizer.padding_side = "right"
        enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=args.max_length)
        return enc

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    step_times, tokens = [], []
    for rows in _batches(task.train, args.batch_size, args.steps, args.seed):
        started = time.perf_counter()
        enc = encode(rows, True)
        labels = torch.full_like(enc.input_ids, -100)
        last = enc.attention_mask.sum(1) - 1  # the label word is the last real token
        labels[torch.arange(len(rows)), last] = enc.input_ids[torch.arange(len(rows)), last]
        out = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - started)
        tokens.append((enc.input_ids.shape[0], enc.input_ids.shape[1] + args.tokens))
    model.eval()

    @torch.no_grad()
    def scores(rows):
        enc = encode(rows, False)
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits  # (B, n + T, V)
        last = enc.attention_mask.sum(1) - 1 + args.tokens
        return logits[torch.arange(len(rows)), last][:, label_ids]

    test = task.test[: args.test_limit]
    predicted = torch.cat([scores(test[s:s + 32]).argmax(-1) for s in range(0, len(test), 32)])
    gold = torch.tensor([task.labels.index(r["label"]) for r in test])
    accuracy = (predicted == gold).float().mean().item()
    texts = [r["text"] for r in test]
    throughput_rows = [{"text": t} for t in texts[:args.throughput_examples]]
    classify_seconds = _timed(lambda: [scores(throughput_rows[s:s + 32])
                                       for s in range(0, len(throughput_rows), 32)], 2)
    single = _timed(lambda: scores([{"text": texts[0]}]), 10)
    enc = tokenizer([prompt_text({"text": texts[0]})], return_tensors="pt")

    def gen():
        with torch.no_grad():
            return model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=8,
                                  do_sample=False, pad_token_id=tokenizer.pad_token_id)

    try:
        generation = _timed(gen, 5)
        sample = tokenizer.decode(gen()[0][enc.input_ids.shape[1]:], skip_special_tokens=True)
    except Exception as exc:  # report, do not hide, a failing generate
        generation, sample = float("nan"), f"generate failed: {exc.__class__.__name__}: {exc}"[:200]
    return _summary(args, step_times, tokens, accuracy, classify_seconds, single, generation, sample,
                    base.config, [0] * len(step_times), str(dtype), full_logits=True)


def _summary(args, step_times, shapes, accuracy, classify_seconds, single, generation, sample, config, frozen,
             dtype, full_logits):
    timed = step_times[args.warmup:]
    shapes = shapes[args.warmup:]
    frozen = frozen[args.warmup:]
    median = statistics.median(timed)
    mean_tokens = statistics.mean(b * t for b, t in shapes)
    flops = statistics.mean(step_flops(config, b, t, 1, f, full_logits) for (b, t), f in zip(shapes, frozen))
    return {"dtype": dtype, "median_step_seconds": median, "tokens_per_second": mean_tokens / median,
            "mean_tokens_per_step": mean_tokens, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "test_accuracy": accuracy, "test_examples": args.test_limit,
            "classify_examples_per_second": args.throughput_examples / classify_seconds,
            "single_request_ms": single * 1000, "generation_8_tokens_ms": generation * 1000,
            "generation_sample": sample, "step_flops": flops, "achieved_gflops": flops / median / 1e9,
            "first_step_seconds": step_times[0],
            "step_times": step_times}


def _worker_args(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--sides":
            skip = True
        elif not a.startswith("--sides=") and a != "--merge":
            out.append(a)
    return out


# ---- driver ---------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a built-in backbone (e.g. qwen2.5-1.5b)")
    parser.add_argument("--name", default="vs_peft", help="results/NAME.json and .md")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-limit", type=int, default=500)
    parser.add_argument("--throughput-examples", type=int, default=256)
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--worker", choices=SIDES + ("compile-only",))
    parser.add_argument("--merge", action="store_true", help="add these sides to the existing results file")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    if args.worker:
        if args.worker == "compile-only":
            result = worker_compile_only(args)
        elif args.worker.startswith("peft"):
            result = worker_peft(args, torch.float32 if args.worker == "peft-fp32" else torch.bfloat16)
        else:
            result = worker_softprompt(args, "suffix" if args.worker.endswith("suffix") else "prefix",
                                       compiled=args.worker == "softprompt")
        print("RESULT " + json.dumps(result), flush=True)
        return

    ceiling = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    print(f"matmul ceiling ({torch.get_num_threads()} threads): fp32 {ceiling['fp32']:.0f} GFLOP/s, "
          f"bf16 {ceiling['bf16']:.0f} GFLOP/s", flush=True)
    rows = {}
    if args.merge and (RESULTS / f"{args.name}.json").is_file():
        rows = json.loads((RESULTS / f"{args.name}.json").read_text())["sides"]
    cache = tempfile.mkdtemp(prefix="vs_peft_inductor_")  # empty: the compiled side's compile is a cold start
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TORCHINDUCTOR_CACHE_DIR": cache}

    def run_worker(side):
        cmd = [sys.executable, __file__, "--worker", side] + _worker_args(sys.argv[1:])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        return (None, proc.stderr) if proc.returncode or line is None else (json.loads(line[len("RESULT "):]), "")

    for side in args.sides.split(","):
        started = time.perf_counter()
        result, stderr = run_worker(side)
        if result is None:
            print(f"{side}: failed\n{stderr[-2000:]}", flush=True)
            rows[side] = {"error": stderr[-500:]}
            continue
        result["wall_seconds"] = time.perf_counter() - started
        if result.get("compile_seconds") is not None:
            warm, _ = run_worker("compile-only")
            result["warm_compile_seconds"] = warm["compile_seconds"] if warm else None
        rows[side] = result
        print(f"{side}: {result['median_step_seconds']:.2f} s/step, acc {result['test_accuracy']:.3f}, "
              f"{result['achieved_gflops']:.0f} GFLOP/s", flush=True)

    after = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    print(f"matmul ceiling after the sides: fp32 {after['fp32']:.0f}, bf16 {after['bf16']:.0f} GFLOP/s", flush=True)
    ceiling = {k: max(ceiling[k], after[k]) for k in ceiling}
    ok = {k: v for k, v in rows.items() if "error" not in v}
    for r in ok.values():
        kind = "bf16" if "bfloat16" in r["dtype"] else "fp32"
        r["ceiling_gflops"] = ceiling[kind]
        r["fraction_of_ceiling"] = r["achieved_gflops"] / ceiling[kind]
    for side, r in ok.items():
        for ref in ("peft-fp32", "peft-bf16"):
            if ref in ok:
                r[f"speedup_vs_{ref}"] = ok[ref]["median_step_seconds"] / r["median_step_seconds"]
                r[f"classify_speedup_vs_{ref}"] = (r["classify_examples_per_second"]
                                                   / ok[ref]["classify_examples_per_second"])
    RESULTS.mkdir(exist_ok=True)
    out = {"settings": {k: v for k, v in vars(args).items() if k != "worker"}, "ceiling_gflops": ceiling,
           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "sides": rows}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1))
    shutil.rmtree(cache, ignore_errors=True)

    def compile_cell(r):
        if r.get("compile_seconds") is None:
            return "—"
        warm = r.get("warm_compile_seconds")
        return f"{r['compile_seconds']:.0f} s cold" + (f", {warm:.1f} s warm" if warm is not None else "")

    header = ("| side | dtype | s/step (median) | tokens/s | speedup vs PEFT fp32 | vs PEFT bf16 | peak RSS MB | "
              "test acc | classify ex/s (b=32) | single ms | gen 8 tok ms | % of ceiling | compile |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {s} | {r['dtype'].replace('torch.', '')} | {r['median_step_seconds']:.2f} | {r['tokens_per_second']:.0f} | "
             f"{r.get('speedup_vs_peft-fp32', float('nan')):.2f}x | {r.get('speedup_vs_peft-bf16', float('nan')):.2f}x | "
             f"{r['peak_rss_mb']:.0f} | {r['test_accuracy']:.1%} | {r['classify_examples_per_second']:.1f} | "
             f"{r['single_request_ms']:.0f} | {r['generation_8_tokens_ms']:.0f} | {r['fraction_of_ceiling']:.0%} | "
             f"{compile_cell(r)} |"
             for s, r in ok.items()]
    table = header + "\n".join(lines) + (f"\n\nCeiling (measured, {out['threads']} threads): fp32 "
                                         f"{ceiling['fp32']:.0f} GFLOP/s, bf16 {ceiling['bf16']:.0f} GFLOP/s. "
                                         f"{args.model}, {args.steps} steps, batch {args.batch_size}, max length "
                                         f"{args.max_length}, "
                                         f"{args.tokens} virtual tokens, test accuracy on {args.test_limit} examples.\n")
    (RESULTS / f"{args.name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
