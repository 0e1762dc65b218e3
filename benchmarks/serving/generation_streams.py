"""Generation at 8 concurrent streams: `softprompt serve` (continuous batching, streamed tokens) vs PEFT `generate`.

One soft prompt (16 vectors initialised from "Answer the question briefly." on smollm2-135m) is used by every
side: saved as a softprompt file for the server and copied into a PEFT `PromptTuningConfig` model's prompt
encoder, so both sides decode the same prompt over the same inputs ("Question: Summarise: <review>" with
`--words` words of a rotten_tomatoes review), greedy, up to `--new-tokens` tokens, stopping at end of sequence.

- `softprompt serve`: a real server process; `--streams` clients each send `--rounds` streamed
  `/v1/completions` requests one after another (rows join and leave the decoding batch between steps).
  Tokens are the server's own count (`softprompt_generated_tokens` in /metrics) over the wall-clock from the
  first request to the last [DONE]; time to first token and the gap between a stream's tokens are measured
  at the client.
- `softprompt.generate` in-process: the same rows, `--streams` at a time, one call each (no HTTP).
- PEFT `generate`, bf16 and fp32 model: the rows in batches of `--streams` (left-padded, the way PEFT serves
  several requests at once: a batch finishes when its longest row does). Tokens are each row's generated
  tokens up to its end-of-sequence token; the first token arrives with the whole batch.

Writes benchmarks/serving/results/generation_streams.{json,md}.

    python benchmarks/serving/generation_streams.py [--streams 8] [--rounds 4] [--new-tokens 32] [--words 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch


from serve_load import MODEL, RESULTS, texts_for  # noqa: E402

import softprompt as sp  # noqa: E402
sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py, the shared helpers
from common import Server  # noqa: E402

TEMPLATE = "Question: {text}\nAnswer: {target}"
TOKENS = 16


def prompt_vectors(backbone) -> torch.Tensor:
    return sp.initial_embeddings("text", TOKENS, backbone.input_embedding_matrix(), backbone.tokenizer,
                                 text="Answer the question briefly.", generator=torch.Generator().manual_seed(5))


def generated_tokens(metrics: str) -> float:
    """The server's count of tokens generated so far (its /metrics text)."""
    return next(float(line.split()[1]) for line in metrics.splitlines()
                if line.split()[:1] == ["softprompt_generated_tokens_total"])


async def server_side(url: str, questions: list[str], args) -> dict:
    first_token, gaps, texts = [], [], {}

    async def stream(http: httpx.AsyncClient, client: int) -> None:
        for r in range(args.rounds):
            index = client * args.rounds + r
            body = {"model": "qa", "prompt": questions[index], "max_tokens": args.new_tokens, "stream": True,
                    "temperature": 0}
            sent = last = time.perf_counter()
            pieces = []
            async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    text = json.loads(line[6:])["choices"][0]["text"]
                    if not text:
                        continue
                    now = time.perf_counter()
                    (gaps if pieces else first_token).append(now - (last if pieces else sent))
                    last = now
                    pieces.append(text)
            texts[index] = "".join(pieces)

    async with httpx.AsyncClient(timeout=600) as http:
        before = generated_tokens((await http.get(f"{url}/metrics")).text)
        started = time.perf_counter()
        await asyncio.gather(*[stream(http, c) for c in range(args.streams)])
        seconds = time.perf_counter() - started
        tokens = generated_tokens((await http.get(f"{url}/metrics")).text) - before
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "first_token_ms_p50": 1000 * statistics.median(first_token),
            "token_gap_ms_p50": 1000 * statistics.median(gaps) if gaps else None,
            "texts": [texts[i] for i in sorted(texts)]}


def library_side(model, questions: list[str], args) -> dict:
    tokenizer = model.backbone.tokenizer
    texts = []
    started = time.perf_counter()
    for s in range(0, len(questions), args.streams):
        out = sp.generate(model, [{"text": q} for q in questions[s:s + args.streams]],
                          max_new_tokens=args.new_tokens)
        texts += out
    seconds = time.perf_counter() - started
    tokens = sum(min(args.new_tokens, len(tokenizer(t, add_special_tokens=False).input_ids) + 1) for t in texts)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "first_token_ms_p50": 1000 * seconds / (len(questions) / args.streams), "texts": texts,
            "note": "tokens counted by re-tokenising the text (+1 for the end of sequence where it stopped early)"}


def peft_side(vectors: torch.Tensor, questions: list[str], dtype: torch.dtype, args) -> dict:
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from softprompt.hub import builtin_backbone_dir

    folder = str(builtin_backbone_dir(MODEL))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder, dtype=dtype),
                           PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=TOKENS)).eval()
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.copy_(vectors.to(dtype))
    texts, tokens, calls = [], 0, []
    started = time.perf_counter()
    for s in range(0, len(questions), args.streams):
        batch = [f"Question: {q}\nAnswer:" for q in questions[s:s + args.streams]]
        enc = tokenizer(batch, return_tensors="pt", padding=True)
        call = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask, do_sample=False,
                                 max_new_tokens=args.new_tokens, pad_token_id=tokenizer.pad_token_id)
        calls.append(time.perf_counter() - call)
        for row in out[:, enc.input_ids.shape[1]:].tolist():
            end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
            tokens += end
            texts.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "first_token_ms_p50": 1000 * statistics.median(calls), "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="requests per stream")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--words", type=int, default=40)
    args = parser.parse_args()
    count = args.streams * args.rounds
    questions = ["Summarise: " + t for t in texts_for("rotten_tomatoes", args.words, limit=count)]
    backbone = sp.load_backbone(MODEL)
    vectors = prompt_vectors(backbone)
    model = sp.PromptedModel(backbone, sp.SoftPrompt(vectors), sp.build_template(TEMPLATE, "prefix", TOKENS), None)
    sides: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sp.save_prompt(Path(tmp) / "qa.safetensors", model)
        server = Server(Path(tmp), mix=True, batch_rows=32, expected=1)
        try:
            warm_up = argparse.Namespace(**{**vars(args), "rounds": 1})  # one request a stream: first shapes
            asyncio.run(server_side(server.url, questions[:args.streams], warm_up))
            sides["softprompt serve (continuous batching, streamed)"] = asyncio.run(
                server_side(server.url, questions, args))
        finally:
            server.stop()
    sp.generate(model, [{"text": questions[0]}], max_new_tokens=4)
    sides[f"softprompt.generate, {args.streams} rows a call"] = library_side(model, questions, args)
    del model, backbone
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        peft_side(vectors, questions[:args.streams], dtype, argparse.Namespace(**{**vars(args), "new_tokens": 2}))
        sides[f"PEFT generate, {name} model, {args.streams} rows a call"] = peft_side(vectors, questions, dtype, args)
    reference = next(iter(sides.values()))
    for side in sides.values():
        side["same_text_as_server"] = sum(a.strip() == b.strip() for a, b in zip(side["texts"], reference["texts"]))
    peft = sides[f"PEFT generate, bf16 model, {args.streams} rows a call"]["tokens_per_second"]
    out = {"settings": vars(args), "model": MODEL, "threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%d"), "sides": sides}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "generation_streams.json").write_text(json.dumps(out, indent=1))
    lines = [f"{MODEL}, one 16-token prompt on every side, {count} requests ({args.streams} streams x "
             f"{args.rounds}), inputs of {args.words} review words, greedy, up to {args.new_tokens} new tokens "
             f"(stops at end of sequence), {out['threads']} threads, {out['date']}: "
             f"`python benchmarks/serving/generation_streams.py`", "",
             "| side | tokens | seconds | tokens/s | × PEFT bf16 | first token ms (p50) | gap between tokens ms (p50) "
             "| same text as the server |", "|---|---|---|---|---|---|---|---|"]
    for name, side in sides.items():
        gap = side.get("token_gap_ms_p50")
        lines.append(f"| {name} | {side['tokens']:.0f} | {side['seconds']:.1f} | {side['tokens_per_second']:.1f} | "
                     f"{side['tokens_per_second'] / peft:.2f}× | {side['first_token_ms_p50']:.0f} | "
                     f"{'—' if gap is None else f'{gap:.0f}'} | {side['same_text_as_server']}/{count} |")
    lines += ["", "First token for the library and PEFT sides: the whole call (they return all tokens at once)."]
    (RESULTS / "generation_streams.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
