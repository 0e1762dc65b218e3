"""Soak of `softprompt serve` at saturation: mixed classify / completion / streaming / prompt upload and delete.

A real server process on smollm2-135m with the eight prompts of `serve_load.py` plus a generation prompt is
driven for `--seconds` (default 600) by closed-loop clients on loopback:

- classify clients: one input each, a random prompt, real review and news texts;
- completion clients: `/v1/completions`, 16 new tokens, sampled with a seed;
- streaming clients: the same with `stream: true`, read to `data: [DONE]`; every fifth stream is dropped by
  its client after the first event (a client going away mid-stream, which the server must survive);
- one admin client: upload a prompt file under a new name, classify with it, delete it, in a loop.

Every request is accounted for: answered with the expected status (ok), answered otherwise (status counted,
any 5xx is a failure), or lost (no answer: connection error, timeout, a stream that ended without [DONE]).
The server's resident memory is sampled every 5 s; after the warm-up a least-squares line gives its slope
(MB per minute) and the samples their bound. Writes results/soak.json and results/soak.md.

    python benchmarks/serving/soak.py [--seconds 600] [--warmup 60] [--classify-clients 24]
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
from collections import Counter
from pathlib import Path

import httpx
import torch


from serve_load import MODEL, RESULTS, make_prompts, texts_for  # noqa: E402

import softprompt as sp  # noqa: E402
sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py, the shared helpers
from common import Server  # noqa: E402

TOKEN = "soak-admin-token"


def make_generation_prompt(folder: Path) -> None:
    backbone = sp.load_backbone(MODEL)
    template = sp.build_template("Question: {text}\nAnswer: {target}", "prefix", 16)
    vectors = sp.initial_embeddings("text", 16, backbone.input_embedding_matrix(), backbone.tokenizer,
                                    text="Answer the question briefly.", generator=torch.Generator().manual_seed(5))
    sp.save_prompt(folder / "qa.safetensors", sp.PromptedModel(backbone, sp.SoftPrompt(vectors), template, None))


class Tally:
    def __init__(self) -> None:
        self.ok: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.lost: Counter[str] = Counter()
        self.dropped = 0             # streams this benchmark's clients abandoned on purpose
        self.samples: list[str] = []
        self.latencies: dict[str, list[float]] = {}

    def answer(self, kind: str, status: int, expected: int, seconds: float, text: str = "") -> None:
        self.statuses[(kind, status)] += 1
        if status == expected:
            self.ok[kind] += 1
            self.latencies.setdefault(kind, []).append(seconds)
        elif len(self.samples) < 10:
            self.samples.append(f"{kind}: {status} {text[:200]}")

    def lose(self, kind: str, why: str) -> None:
        self.lost[kind] += 1
        if len(self.samples) < 10:
            self.samples.append(f"{kind}: lost ({why[:200]})")


async def soak(url: str, sources: dict[str, str], texts: dict[str, list[str]], prompt_bytes: bytes,
               args: argparse.Namespace, tally: Tally) -> None:
    end = time.perf_counter() + args.seconds
    names = sorted(sources)
    questions = [t for t in texts["rotten_tomatoes"]][:200]

    async def classify(http: httpx.AsyncClient, rng: random.Random) -> None:
        while time.perf_counter() < end:
            name = rng.choice(names)
            sent = time.perf_counter()
            try:
                r = await http.post(f"{url}/v1/classify", json={"prompt": name,
                                                                 "inputs": [rng.choice(texts[sources[name]])]})
                tally.answer("classify", r.status_code, 200, time.perf_counter() - sent, r.text)
            except httpx.HTTPError as exc:
                tally.lose("classify", f"{type(exc).__name__}: {exc}")

    async def complete(http: httpx.AsyncClient, rng: random.Random) -> None:
        while time.perf_counter() < end:
            body = {"model": "qa", "prompt": "What did the critic think? " + rng.choice(questions)[:200],
                    "max_tokens": 16, "temperature": 0.8, "seed": rng.randrange(1 << 30)}
            sent = time.perf_counter()
            try:
                r = await http.post(f"{url}/v1/completions", json=body)
                tally.answer("completion", r.status_code, 200, time.perf_counter() - sent, r.text)
            except httpx.HTTPError as exc:
                tally.lose("completion", f"{type(exc).__name__}: {exc}")

    async def stream(http: httpx.AsyncClient, rng: random.Random) -> None:
        count = 0
        while time.perf_counter() < end:
            count += 1
            drop = count % 5 == 0
            body = {"model": "qa", "prompt": "Summarise: " + rng.choice(questions)[:200], "max_tokens": 16,
                    "stream": True, "temperature": 0.8, "seed": rng.randrange(1 << 30)}
            sent = time.perf_counter()
            try:
                async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        tally.answer("stream", r.status_code, 200, 0, (await r.aread()).decode(errors="replace"))
                        continue
                    done = False
                    async for line in r.aiter_lines():
                        if drop and line.startswith("data: "):
                            break  # leave mid-stream: closing the response drops the connection
                        if line == "data: [DONE]":
                            done = True
                    if drop:
                        tally.dropped += 1
                    elif done:
                        tally.answer("stream", 200, 200, time.perf_counter() - sent)
                    else:
                        tally.lose("stream", "ended without data: [DONE]")
            except httpx.HTTPError as exc:
                tally.lose("stream", f"{type(exc).__name__}: {exc}")

    async def admin(http: httpx.AsyncClient) -> None:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        count = 0
        while time.perf_counter() < end:
            count += 1
            name = f"soak-{count}"
            steps = [("upload", "POST", f"{url}/v1/prompts?name={name}", {"content": prompt_bytes, "headers": auth},
                      201),
                     ("classify-uploaded", "POST", f"{url}/v1/classify",
                      {"json": {"prompt": name, "inputs": ["a warm, funny film"]}}, 200),
                     ("delete", "DELETE", f"{url}/v1/prompts/{name}", {"headers": auth}, 200)]
            for kind, method, address, options, expected in steps:
                sent = time.perf_counter()
                try:
                    r = await http.request(method, address, **options)
                    tally.answer(kind, r.status_code, expected, time.perf_counter() - sent, r.text)
                except httpx.HTTPError as exc:
                    tally.lose(kind, f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(1.0)

    clients = args.classify_clients + 2 * args.generation_clients + 1
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        rng = random.Random(7)
        tasks = ([classify(http, random.Random(rng.random())) for _ in range(args.classify_clients)]
                 + [complete(http, random.Random(rng.random())) for _ in range(args.generation_clients)]
                 + [stream(http, random.Random(rng.random())) for _ in range(args.generation_clients)]
                 + [admin(http)])
        await asyncio.gather(*tasks)


def slope_mb_per_minute(samples: list[tuple[float, float]]) -> float:
    xs, ys = [t / 60 for t, _ in samples], [rss for _, rss in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--warmup", type=float, default=60, help="seconds before the memory slope is measured")
    parser.add_argument("--classify-clients", type=int, default=24)
    parser.add_argument("--generation-clients", type=int, default=4, help="completion clients, and as many streams")
    parser.add_argument("--output", default=str(RESULTS / "soak"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # the bench process only writes prompts and drives clients

    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    sources = make_prompts(folder)
    make_generation_prompt(folder)
    prompt_bytes = (folder / "sentiment-a.safetensors").read_bytes()
    texts = {data: texts_for(data, 40) for data in set(sources.values())}
    os.environ["SOFTPROMPT_ADMIN_TOKEN"] = TOKEN
    server = Server(folder, True, 32, expected=9)
    tally = Tally()
    samples: list[tuple[float, float]] = []
    started = time.perf_counter()

    async def run() -> None:
        async def sample() -> None:
            while time.perf_counter() - started < args.seconds:
                samples.append((round(time.perf_counter() - started, 1), server.rss_mb()))
                await asyncio.sleep(5)

        await asyncio.gather(soak(server.url, sources, texts, prompt_bytes, args, tally), sample())

    try:
        asyncio.run(run())
        alive = server.process.poll() is None
        metrics = server.metrics()
    finally:
        server.stop()
    steady = [(t, rss) for t, rss in samples if t >= args.warmup]
    abandoned = next((float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith("softprompt_abandoned_rows_total ")), 0.0)
    server_errors = sum(n for (_, status), n in tally.statuses.items() if status >= 500)
    result = {
        "model": MODEL, "seconds": args.seconds, "warmup_seconds": args.warmup,
        "clients": {"classify": args.classify_clients, "completion": args.generation_clients,
                    "stream": args.generation_clients, "admin": 1},
        "ok": dict(tally.ok), "statuses": {f"{kind} {status}": n for (kind, status), n in sorted(tally.statuses.items())},
        "server_errors_5xx": server_errors, "lost": dict(tally.lost), "lost_total": sum(tally.lost.values()),
        "streams_dropped_by_clients": tally.dropped, "rows_abandoned_by_server": abandoned,
        "server_alive_at_end": alive,
        "throughput_rps": {kind: n / args.seconds for kind, n in tally.ok.items()},
        "p50_ms": {kind: 1000 * statistics.median(v) for kind, v in tally.latencies.items()},
        "p99_ms": {kind: 1000 * sorted(v)[int(0.99 * (len(v) - 1))] for kind, v in tally.latencies.items()},
        "rss_samples": samples, "rss_after_warmup_mb": {"first": steady[0][1], "last": steady[-1][1],
                                                         "min": min(r for _, r in steady),
                                                         "max": max(r for _, r in steady)},
        "rss_slope_mb_per_minute": slope_mb_per_minute(steady), "problems": tally.samples,
        "cpu_threads": os.cpu_count(),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    rss = result["rss_after_warmup_mb"]
    lines = [f"Soak of `softprompt serve` ({MODEL}, 9 prompts), {args.seconds:.0f} s at saturation on "
             f"{os.cpu_count()} CPU threads: `python benchmarks/serving/soak.py --seconds {args.seconds:.0f}`", "",
             "| requests | clients | ok | other answers | lost | ok/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for kind in ("classify", "completion", "stream", "upload", "classify-uploaded", "delete"):
        others = sum(n for (k, status), n in tally.statuses.items() if k == kind and status != (
            201 if kind == "upload" else 200))
        clients = result["clients"].get(kind, 1)
        lines.append(f"| {kind} | {clients} | {tally.ok[kind]} | {others} | {tally.lost[kind]} | "
                     f"{result['throughput_rps'].get(kind, 0):.2f} | {result['p50_ms'].get(kind, float('nan')):.0f} | "
                     f"{result['p99_ms'].get(kind, float('nan')):.0f} |")
    lines += ["", f"5xx answers: {server_errors}; lost requests: {result['lost_total']}; streams dropped on purpose "
                  f"by clients: {tally.dropped} (rows the server abandoned: {abandoned:.0f}); server alive at the "
                  f"end: {alive}.",
              f"Server RSS after the {args.warmup:.0f} s warm-up: {rss['first']:.0f} MB at the start, "
              f"{rss['last']:.0f} MB at the end, between {rss['min']:.0f} and {rss['max']:.0f} MB; least-squares "
              f"slope {result['rss_slope_mb_per_minute']:+.2f} MB/min over {len(steady)} samples."]
    if tally.samples:
        lines += ["", "First problems seen:", *[f"- {p}" for p in tally.samples]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
