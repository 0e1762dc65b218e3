"""Scoring label words of several tokens: one row per (example, word) vs a shared context cache.

An 18-topic prompt on `chatterbot-english` (topic words of up to 2 SmolLM2 tokens), inference only, interleaved:

- `row per word`: the context followed by each word's leading tokens, one row per (example, word) -- the layout
  `PromptedModel` keeps for `--gradient-checkpointing` (and that both training and the server used before);
- `shared context`: `PromptedModel.word_scores` -- the context runs once, its key/value cache is repeated per
  word and only the words' tokens run after it;
- `server batch`: `run_batch` (the server's mixed-prompt path) on the same requests, which shares the context
  the same way.

Reports median milliseconds per batch, the ratio to `row per word`, and the largest score difference from it
(bf16 by default: expect ~0.1 from the different summation layouts; --precision fp32 gives ~1e-5).
Writes results/multi_token_words.json/.md.

    python benchmarks/serving/multi_token_words.py [--sizes 1,16] [--reps 5] [--precision auto]

Takes ~5 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import softprompt as sp
from softprompt.inference.batch import Request, run_batch

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,16", help="examples per batch")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    backbone = sp.load_backbone("smollm2-135m", dtype=args.precision)
    task = sp.load_task("chatterbot-english")
    model = sp.build_prompted_model(sp.TrainConfig(data="chatterbot-english", init="vocab", output="/tmp/unused"),
                                    backbone, task)
    device = backbone.device
    texts = [r["text"] for r in task.test]

    def per_word(batch):
        return model.word_scores_from_hidden(model.hidden(model._per_word_batch(batch))[0])

    def server(rows):
        results = run_batch(backbone, [Request(model, r["text"], "classify") for r in rows])
        return torch.tensor([[r.scores[label] for label in model.labels] for r in results])

    rows_out = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows = [{"text": t} for t in texts[:size]]
        batch = {k: v.to(device) for k, v in model.make_batch(rows, label_field=None).items()}
        ways = {"row per word": lambda: model.verbalizer.class_scores(per_word(batch)),
                "shared context": lambda: model.class_scores(batch),
                "server batch": lambda: server(rows)}
        times: dict[str, list[float]] = {name: [] for name in ways}
        scores = {}
        with torch.no_grad():
            for _ in range(args.reps):
                for name, run in ways.items():
                    started = time.perf_counter()
                    scores[name] = run().float().cpu()
                    times[name].append(time.perf_counter() - started)
        base = statistics.median(times["row per word"])
        for name in ways:
            median = statistics.median(times[name])
            rows_out.append({"examples": size, "way": name, "median_ms": 1000 * median, "speedup": base / median,
                             "max_score_diff": float((scores[name] - scores["row per word"]).abs().max()),
                             "same_predictions": bool(torch.equal(scores[name].argmax(-1),
                                                                  scores["row per word"].argmax(-1)))})
            print(json.dumps(rows_out[-1]), flush=True)
    lines = [f"### Multi-token label words (smollm2-135m, {args.precision}, {len(model.labels)} classes, "
             f"words of up to {model.max_word_tokens} tokens; median of {args.reps})", "",
             "| examples | way | median ms | speedup vs row per word | max score diff | same predictions |",
             "|---|---|---|---|---|---|"]
    for r in rows_out:
        lines.append(f"| {r['examples']} | {r['way']} | {r['median_ms']:.0f} | {r['speedup']:.1f}x | "
                     f"{r['max_score_diff']:.1e} | {r['same_predictions']} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "multi_token_words.json").write_text(json.dumps({"precision": args.precision, "rows": rows_out},
                                                               indent=1))
    (RESULTS / "multi_token_words.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
