"""`softprompt serve --engine torch` vs `--engine vllm` on this CPU, side by side in one run.

The same eight prompts as serve_load.py (four sentiment, four topic, prefix and suffix placements, 10-40 virtual
tokens on smollm2-135m) plus one generation prompt, the same API, the same precision on both engines. For each
engine a real server process is started (with `--engine vllm` it starts vLLM's own server, which runs every row as
prompt embeddings) and measured for:

- start-up: seconds from the command to a /healthz that lists every prompt;
- classification: `--clients` closed-loop clients send single-input /v1/classify requests for random prompts
  (texts clipped to each of `--words`) for `--seconds` after a warm-up: requests/s, p50 and p99 latency;
- generation: `--streams` clients each stream `--rounds` greedy /v1/completions of up to `--new-tokens` tokens:
  tokens/s over the wall-clock (the server's own token count);
- memory: the proportional set size of the server and every process it started, after the load.

Writes benchmarks/serving/results/vllm_engine.{json,md}.

    python benchmarks/serving/vllm_engine.py [--clients 32] [--words 25,75] [--seconds 30] [--streams 8]

Takes ~10 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

import softprompt as sp
from serve_load import load, make_prompts, texts_for  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py, the shared helpers
from common import Server, write_results  # noqa: E402

HERE = Path(__file__).parent


def add_generation_prompt(folder: Path) -> None:
    backbone = sp.load_backbone("smollm2-135m")
    vectors = sp.initial_embeddings("text", 16, backbone.input_embedding_matrix(), backbone.tokenizer,
                                    text="Answer the question briefly.")
    model = sp.PromptedModel(backbone, sp.SoftPrompt(vectors),
                             sp.build_template("Question: {text}\nAnswer: {target}", "prefix", 16), None)
    sp.save_prompt(folder / "answer.safetensors", model)


def generated_tokens(server: Server) -> float:
    for line in server.metrics().splitlines():
        if line.startswith("softprompt_generated_tokens_total "):
            return float(line.split()[1])
    return 0.0


async def streams(url: str, questions: list[str], count: int, rounds: int, new_tokens: int) -> float:
    """Wall-clock seconds for `count` clients, each streaming `rounds` completions one after another."""
    async def client(http: httpx.AsyncClient, index: int) -> None:
        for r in range(rounds):
            body = {"model": "answer", "prompt": questions[(index * rounds + r) % len(questions)],
                    "max_tokens": new_tokens, "temperature": 0, "stream": True}
            async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
                async for _ in response.aiter_lines():
                    pass

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http, i) for i in range(count)))
    return time.perf_counter() - started


def measure(engine: str, folder: Path, sources: dict, args) -> dict:
    extra = ("--engine", engine, "--precision", args.precision, "--device", args.device)
    if engine == "vllm" and args.vllm_args:
        extra += ("--vllm-args", args.vllm_args)
    started = time.perf_counter()
    server = Server(folder, mix=True, batch_rows=32, expected=len(sources) + 1, extra=extra)
    row: dict = {"engine": engine, "startup_s": time.perf_counter() - started, "classify": []}
    try:
        for words in args.words:
            texts = {data: texts_for(data, words) for data in set(sources.values())}
            result = asyncio.run(load(server.url, sources, texts, args.clients, args.seconds, args.warmup, seed=0))
            row["classify"].append({"words": words, **result})
            print(f"{engine}: {words} words, {args.clients} clients: {result['throughput_rps']:.1f} req/s, "
                  f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, errors {result['errors']}",
                  flush=True)
        questions = [f"Summarise: {t}" for t in texts_for("rotten_tomatoes", 30)]
        before = generated_tokens(server)
        wall = asyncio.run(streams(server.url, questions, args.streams, args.rounds, args.new_tokens))
        tokens = generated_tokens(server) - before
        row["generation"] = {"streams": args.streams, "tokens": tokens, "seconds": wall,
                             "tokens_per_s": tokens / wall}
        print(f"{engine}: generation at {args.streams} streams: {tokens / wall:.1f} tokens/s", flush=True)
        row["memory_mb"] = server.tree_pss_mb()
    finally:
        server.stop()
    return row


def markdown(rows: list[dict], args) -> str:
    where = "2 CPU cores" if args.device == "cpu" else (torch.cuda.get_device_name() if torch.cuda.is_available()
                                                        else args.device)
    lines = [f"### softprompt serve: torch engine vs vLLM engine ({args.precision}, smollm2-135m, 8 prompts, "
             f"{args.clients} clients, {where})", "",
             "| engine | start-up s | " + " | ".join(f"{w} words: req/s, p50 / p99 ms" for w in args.words)
             + f" | generation tokens/s ({args.streams} streams) | memory MB |",
             "|---|---|" + "---|" * len(args.words) + "---|---|"]
    for row in rows:
        cells = [f"{c['throughput_rps']:.1f}, {c['p50_ms']:.0f} / {c['p99_ms']:.0f}" for c in row["classify"]]
        lines.append(f"| {row['engine']} | {row['startup_s']:.0f} | " + " | ".join(cells)
                     + f" | {row['generation']['tokens_per_s']:.1f} | {row['memory_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--words", default="25,75")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=8)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="cpu", help="cuda: the torch engine on the GPU; the vLLM engine's "
                                                        "server then needs a CUDA vLLM in .venv-vllm")
    parser.add_argument("--engines", default="torch,vllm")
    parser.add_argument("--vllm-args", default="", help="passed to the vLLM server (e.g. --enforce-eager)")
    parser.add_argument("--name", default="vllm_engine")
    args = parser.parse_args()
    args.words = [int(w) for w in args.words.split(",")]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sources = make_prompts(folder)
        add_generation_prompt(folder)
        rows = [measure(engine, folder, sources, args) for engine in args.engines.split(",")]
    table = markdown(rows, args)
    print(table)
    write_results(HERE, args.name, {"args": {k: v for k, v in vars(args).items()}, "rows": rows}, table)


if __name__ == "__main__":
    main()
