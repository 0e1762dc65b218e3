"""Many prompts on one backbone: a server holding 1,000 prompts against the same load over 8.

The 8 prompts of `serve_load.py` (four sentiment, four topic; prefix and suffix; 10-40 virtual tokens) are
perturbed into 1,000 (each copy's vectors plus Gaussian noise of 1% of their scale). A real `softprompt serve`
process is started on the 8, then on the 1,000, then on the 1,000 under a small `--prompt-cache-mb`, and N
closed-loop clients send single-input /v1/classify requests for random prompts of that server (real texts clipped
to `--words`). Reported: throughput, p50/p99, and the server's resident memory before and after the load next to
the prompts' own bytes (their vectors) and the bytes of their cached keys/values (`/metrics`). Writes
results/many_prompts.json and .md.

    python benchmarks/serving/many_prompts.py [--prompts 1000] [--clients 32] [--words 25] [--seconds 40]

Takes ~8 min on 2 CPU cores.
"""

from __future__ import annotations

import sys

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import torch
from serve_load import MODEL, load, make_prompts, texts_for

import softprompt as sp
from softprompt.formats import read_prompt_tensors, save_prompt
from softprompt.kinds.table import load_prompted_model
sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py, the shared helpers
from common import Server  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def perturbed_copies(folder: Path, out: Path, sources: dict[str, str], total: int) -> dict[str, str]:
    """`total` prompt files in `out`: the originals and noisy copies of them; returns name -> dataset."""
    backbone = sp.load_backbone(MODEL)
    bases = sorted(sources)
    generator = torch.Generator().manual_seed(0)
    names: dict[str, str] = {}
    for i in range(total):
        base = bases[i % len(bases)]
        model = load_prompted_model(folder / f"{base}.safetensors", backbone)  # a fresh copy to perturb
        name = base if i < len(bases) else f"{base}-{i}"
        if i >= len(bases):
            with torch.no_grad():
                for p in model.prompt.parameters():
                    p.add_(torch.randn(p.shape, generator=generator) * 0.01 * p.std())
        save_prompt(out / f"{name}.safetensors", model)
        names[name] = sources[base]
    return names


def vector_bytes(folder: Path, names) -> int:
    """Bytes of the prompts' stored vectors (the tensors in their files)."""
    return sum(t.numel() * t.element_size() for name in names
               for t in read_prompt_tensors(folder / f"{name}.safetensors")[0].values())


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--words", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--warmup", type=float, default=8)
    parser.add_argument("--small-cache-mb", type=float, default=64, help="the budget of the eviction run")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the bench process only writes prompts and drives clients

    eight = Path(tempfile.mkdtemp(prefix="many-prompts-8-"))
    sources8 = make_prompts(eight)
    many = Path(tempfile.mkdtemp(prefix="many-prompts-all-"))
    sources_many = perturbed_copies(eight, many, sources8, args.prompts)
    eight_bytes, many_bytes = vector_bytes(eight, sources8), vector_bytes(many, sources_many)
    texts = {data: texts_for(data, args.words) for data in set(sources8.values())}

    runs = []
    setups = [(f"{len(sources8)} prompts", eight, sources8, eight_bytes, ()),
              (f"{args.prompts} prompts", many, sources_many, many_bytes, ()),
              (f"{args.prompts} prompts, --prompt-cache-mb {args.small_cache_mb:g}", many, sources_many, many_bytes,
               ("--prompt-cache-mb", str(args.small_cache_mb)))]
    for label, folder, sources, stored_bytes, extra in setups:
        server = Server(folder, True, 32, expected=len(sources), extra=extra)
        try:
            rss_idle = server.rss_mb()
            result = asyncio.run(load(server.url, sources, texts, args.clients, args.seconds, args.warmup, 0))
            metrics = server.metrics()
            result.update(setup=label, prompts=len(sources), rss_idle_mb=rss_idle, rss_after_mb=server.rss_mb(),
                          prompt_vector_mb=stored_bytes / 2**20,
                          cache_mb=metric(metrics, "softprompt_prompt_cache_bytes") / 2**20,
                          cache_evictions=metric(metrics, "softprompt_prompt_cache_evictions"))
        finally:
            server.stop()
        runs.append(result)
        print(json.dumps(result), flush=True)

    base, full = runs[0], runs[1]
    out = {"model": MODEL, "clients": args.clients, "words": args.words, "seconds": args.seconds, "runs": runs,
           "p99_ratio_many_over_8": full["p99_ms"] / base["p99_ms"],
           "rss_growth_mb": full["rss_after_mb"] - base["rss_after_mb"],
           "prompt_and_cache_mb": (full["prompt_vector_mb"] - base["prompt_vector_mb"])
           + (full["cache_mb"] - base["cache_mb"])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "many_prompts.json").write_text(json.dumps(out, indent=1))
    lines = [f"### {MODEL}, {args.clients} clients, ~{args.words}-word inputs, {args.seconds:g} s per server, "
             "mixed-prompt batches", "",
             "| server | req/s | p50 ms | p99 ms | errors | RSS idle MB | RSS after MB | prompt vectors MB | "
             "cached keys/values MB | cache evictions |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['setup']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                     f"{r['errors']} | {r['rss_idle_mb']:.0f} | {r['rss_after_mb']:.0f} | "
                     f"{r['prompt_vector_mb']:.1f} | {r['cache_mb']:.1f} | {r['cache_evictions']:.0f} |")
    lines += ["", f"p99 over {args.prompts} prompts / over 8: {out['p99_ratio_many_over_8']:.2f}x; resident memory "
              f"after the load grew {out['rss_growth_mb']:.0f} MB against {out['prompt_and_cache_mb']:.0f} MB of "
              "extra prompt vectors + cached keys/values"]
    (RESULTS / "many_prompts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
