"""Load test of `softprompt serve` on loopback: mixed-prompt batching vs one prompt per batch, and a soak.

Eight prompts on smollm2-135m (four sentiment, four topic; 10-40 virtual tokens; prefix and suffix
placements; initialised, not trained: serving cost does not depend on what a prompt learned). For each
client count N, a real server process is started twice -- `--mix-prompts` and `--one-prompt-per-batch`,
everything else equal -- and N closed-loop clients send single-input /v1/classify requests for random
prompts (real review and news texts, clipped to `--words`) for `--seconds`; a third server takes one row per
batch (unbatched) for reference. Then a mixed-batching server is soaked for
`--soak-seconds` while its RSS is sampled. Each run's rows/s is also put against the compute ceiling: the bf16
matmul rate measured here (`vs_peft.matmul_gflops`, at the server's threads, before any server starts) over the
FLOPs of a row (`row_flops`: every linear layer per token run, attention over the attended columns, one
vocabulary projection; mean over the workload's requests). Writes results/serve_load.json and .md.

    python benchmarks/serving/serve_load.py [--clients 8,32] [--words 25,75] [--seconds 40] [--soak-seconds 300]

Takes ~20 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

import softprompt as sp
sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py, the shared helpers
from common import matmul_gflops, Server  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m"


def make_prompts(folder: Path) -> dict[str, str]:
    """Eight prompt files; returns prompt name -> the dataset its requests draw texts from."""
    backbone = sp.load_backbone(MODEL)
    matrix, tokenizer = backbone.input_embedding_matrix(), backbone.tokenizer
    specs = [
        ("sentiment-a", "rotten_tomatoes", "Review: {text} Sentiment: {label}", "prefix", 20, "labels"),
        ("sentiment-b", "rotten_tomatoes", "{text} The movie was {label}", "prefix", 10, "text"),
        ("sentiment-c", "rotten_tomatoes", "Review: {text} Sentiment: {label}", "suffix", 20, "vocab"),
        ("sentiment-d", "rotten_tomatoes", "Is this review positive or negative? {text} Answer: {label}", "prefix",
         40, "labels"),
        ("topic-a", "bbc_news", "Article: {text} Topic: {label}", "prefix", 20, "labels"),
        ("topic-b", "bbc_news", "{text} This article is about {label}", "prefix", 10, "text"),
        ("topic-c", "bbc_news", "Article: {text} Topic: {label}", "suffix", 30, "vocab"),
        ("topic-d", "bbc_news", "News: {text} Section: {label}", "prefix", 40, "labels"),
    ]
    sources = {}
    for name, data, body, placement, count, init in specs:
        labels = list(sp.load_task(data).labels)
        template = sp.build_template(body, placement, count)
        verbalizer = sp.Verbalizer.from_spec(labels)
        words = sp.PromptedModel.zero_shot(backbone, template.source.replace(f"[soft:{count}]", "").strip(),
                                           verbalizer).word_ids
        vectors = sp.initial_embeddings(init, count, matrix, tokenizer, text="Classify the text.",
                                        label_word_ids=words, generator=torch.Generator().manual_seed(len(sources)))
        model = sp.PromptedModel(backbone, sp.SoftPrompt(vectors), template, verbalizer)
        sp.save_prompt(folder / f"{name}.safetensors", model)
        sources[name] = data
    return sources


def row_flops(model, backbone, rest_tokens: int, prefix: int) -> float:
    """Multiply-add FLOPs x2 of one classification row: `rest_tokens` columns run, attending to `prefix` cached
    columns as well."""
    config = backbone.model.config
    linear = sum(m.weight.numel() for layer in backbone.decoder_layers() for m in layer.modules()
                 if isinstance(m, torch.nn.Linear))
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    keys = prefix + (rest_tokens + 1) / 2                                 # causal: mean attended columns
    attention = 2 * 2 * config.num_hidden_layers * heads * head_dim * keys * rest_tokens
    head = 2 * backbone.hidden_size * backbone.vocab_size
    return 2 * linear * rest_tokens + attention + head


def workload_gflops_per_row(folder: Path, sources: dict[str, str], texts: dict[str, list[str]],
                            requests: int = 400) -> float:
    """Mean GFLOPs of a row of the load's random (prompt, text) requests, counted as the server runs them."""
    from softprompt.inference.batch import split_cached_prefix, fields_of

    backbone = sp.load_backbone(MODEL)
    models = {name: sp.load_prompted_model(folder / f"{name}.safetensors", backbone) for name in sources}
    rng = random.Random(0)
    total = 0.0
    for _ in range(requests):
        name = rng.choice(sorted(sources))
        model = models[name]
        inputs = rng.choice(texts[sources[name]])
        row = split_cached_prefix(model, model.encoder.encode(fields_of(model, inputs)))
        total += row_flops(model, backbone, len(row.rest.input_ids), row.prefix)
    return total / requests / 1e9


def batch_seconds(backbone, requests, size: int, repeats: int) -> float:
    """Median seconds of `run_batch` over all `requests` in batches of `size` rows, in process (no HTTP)."""
    from softprompt.inference.batch import run_batch

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(requests), size):
            run_batch(backbone, requests[start:start + size])
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def texts_for(data: str, words: int, limit: int = 400) -> list[str]:
    rows = sp.load_task(data).test[:limit]
    return [" ".join(r["text"].split()[:words]) for r in rows]  # news articles clipped to a paragraph


MODES = {"mixed prompts": (True, None), "one prompt per batch": (False, None), "unbatched": (True, 1)}


def mean_batch_rows(metrics: str) -> float:
    values = {}
    for line in metrics.splitlines():
        if line.startswith(("softprompt_batch_rows_sum", "softprompt_batch_rows_count")):
            values[line.split()[0]] = float(line.split()[1])
    return values["softprompt_batch_rows_sum"] / max(values["softprompt_batch_rows_count"], 1)


async def load(url: str, sources: dict[str, str], texts: dict[str, list[str]], clients: int, seconds: float,
               warmup: float, seed: int, on_tick=None) -> dict:
    """N closed-loop clients; latencies of requests that start after the warm-up and finish in the window."""
    rng = random.Random(seed)
    names = sorted(sources)
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    window = (start + warmup, start + warmup + seconds)

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < window[1]:
            name = rng.choice(names)
            body = {"prompt": name, "inputs": [rng.choice(texts[sources[name]])]}
            sent = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/classify", json=body)
                ok = response.status_code == 200 and len(response.json()["results"]) == 1
                problem = None if ok else f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            done = time.perf_counter()
            if sent >= window[0] and done <= window[1]:
                if problem:
                    errors.append(problem)
                else:
                    latencies.append(done - sent)

    async def ticker() -> None:
        while time.perf_counter() < window[1]:
            await asyncio.sleep(5)
            on_tick(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        tasks = [client(http) for _ in range(clients)] + ([ticker()] if on_tick else [])
        await asyncio.gather(*tasks)
    latencies.sort()
    return {"clients": clients, "seconds": seconds, "requests": len(latencies), "errors": len(errors),
            "error_samples": errors[:3], "throughput_rps": len(latencies) / seconds,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="8,32")
    parser.add_argument("--words", default="25,75", help="workloads: inputs clipped to this many words")
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--warmup", type=float, default=8)
    parser.add_argument("--batch-rows", type=int, default=32)
    parser.add_argument("--soak-seconds", type=float, default=300)
    parser.add_argument("--soak-clients", type=int, default=32)
    args = parser.parse_args()

    ceiling = matmul_gflops(torch.bfloat16)  # at the threads a server uses, before any server runs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the bench process only writes prompts and drives clients

    folder = Path(tempfile.mkdtemp(prefix="serve-load-"))
    sources = make_prompts(folder)
    runs = []
    for words in [int(w) for w in args.words.split(",")]:
        texts = {data: texts_for(data, words) for data in set(sources.values())}
        gflops = workload_gflops_per_row(folder, sources, texts)
        for clients in [int(c) for c in args.clients.split(",")]:
            for mode, (mix, rows) in MODES.items():
                server = Server(folder, mix, rows or args.batch_rows)
                try:
                    result = asyncio.run(load(server.url, sources, texts, clients, args.seconds, args.warmup, 0))
                    result.update(mode=mode, words=words, mean_batch_rows=mean_batch_rows(server.metrics()),
                                  server_rss_mb=server.rss_mb(), gflops_per_row=gflops,
                                  fraction_of_ceiling=result["throughput_rps"] * gflops / ceiling,
                                  p99_over_p50=result["p99_ms"] / result["p50_ms"] if result["requests"] else float("nan"))
                finally:
                    server.stop()
                runs.append(result)
                print(json.dumps(result), flush=True)

    soak = None
    if args.soak_seconds > 0:
        server = Server(folder, True, args.batch_rows)
        texts = {data: texts_for(data, int(args.words.split(",")[0])) for data in set(sources.values())}
        samples: list[tuple[float, float]] = []
        try:
            result = asyncio.run(load(server.url, sources, texts, args.soak_clients, args.soak_seconds, args.warmup,
                                      seed=1, on_tick=lambda t: samples.append((round(t, 1), server.rss_mb()))))
        finally:
            server.stop()
        steady = [rss for t, rss in samples if t >= args.warmup + 30]  # after warm-up and the first half-minute
        base = steady[0]
        soak = {**result, "rss_samples": samples, "rss_baseline_mb": base,
                "rss_max_deviation": max(abs(r - base) / base for r in steady),
                "rss_end_change": (steady[-1] - base) / base}
        print(json.dumps({k: v for k, v in soak.items() if k != "rss_samples"}), flush=True)

    ratios = {}
    for key in sorted({(r["words"], r["clients"]) for r in runs}):
        group = {r["mode"]: r["throughput_rps"] for r in runs if (r["words"], r["clients"]) == key}
        ratios[f"{key[0]} words, {key[1]} clients"] = {
            "vs one prompt per batch": group["mixed prompts"] / group["one prompt per batch"],
            "vs unbatched": group["mixed prompts"] / group["unbatched"]}
    out = {"model": MODEL, "prompts": 8, "batch_rows": args.batch_rows, "batch_wait_ms": 10, "runs": runs,
           "mixed_over_one_prompt": ratios, "soak": soak, "cpu_threads": os.cpu_count(),
           "ceiling_bf16_gflops": ceiling, "ceiling_threads": threads, "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(out, indent=1))
    lines = [f"bf16 matmul ceiling {ceiling:.0f} GFLOP/s ({threads} threads).", "",
             "| input words | clients | batching | req/s | GFLOP/row | % of ceiling | p50 ms | p99 ms | p99/p50 | errors "
             "| mean rows/batch | server RSS MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['words']} | {r['clients']} | {r['mode']} | {r['throughput_rps']:.1f} | "
                     f"{r['gflops_per_row']:.1f} | {r['fraction_of_ceiling']:.0%} | {r['p50_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r['p99_over_p50']:.1f} | {r['errors']} | {r['mean_batch_rows']:.1f} | "
                     f"{r['server_rss_mb']:.0f} |")
    lines.append("")
    lines += [f"mixed-prompt throughput at {key}: {x['vs one prompt per batch']:.2f}x one prompt per batch, "
              f"{x['vs unbatched']:.2f}x unbatched" for key, x in ratios.items()]
    if soak:
        lines.append(f"soak: {soak['clients']} clients for {soak['seconds']:.0f} s: {soak['requests']} requests, "
                     f"{soak['errors']} errors, {soak['throughput_rps']:.1f} req/s, p99 {soak['p99_ms']:.0f} ms; "
                     f"server RSS {soak['rss_baseline_mb']:.0f} MB, max deviation "
                     f"{100 * soak['rss_max_deviation']:.1f}%, end {100 * soak['rss_end_change']:+.1f}%")
    (RESULTS / "serve_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
