"""Scores through vLLM against softprompt's torch path: fp32 and bf16, one-token and multi-token label words.

On smollm2-135m, one 20-token prefix prompt initialised from the label words, 200 rotten_tomatoes test reviews
(one-token words `negative` / `positive`) and the same reviews under a verbaliser of multi-token words, several per
class (`dreadful`, `a waste of time` / `wonderful`, `worth watching`), which puts many rows near a tie. For each
precision a vLLM server (`--enable-prompt-embeds`, `--enforce-eager`) is started from .venv-vllm and every row is
classified through `softprompt.clients.vllm.VLLMClient`. Reported against the torch path in fp32: the largest
|Δ class log-prob| and the share of rows with the same label, with torch bf16 against torch fp32 beside it as
bf16's own error. Then greedy generations (8 questions, 24 tokens) in fp32, torch vs vLLM: how many are identical.
Writes benchmarks/serving/results/vllm_parity.{json,md}.

    python benchmarks/serving/vllm_parity.py [--rows 200]

Takes ~4 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import softprompt as sp
from softprompt.cli.common import free_port
from softprompt.clients.vllm import VLLMClient
from softprompt.hub import builtin_backbone_dir
from softprompt.inference.batch import Request
from softprompt.inference.engine import run_requests
from softprompt.serve.vllm_engine import VLLM_VENV, started_vllm_server, vllm_command

sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py, the shared helpers
from common import write_results  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
MULTI = {"negative": ["dreadful", "a waste of time"], "positive": ["wonderful", "worth watching"]}
QUESTIONS = ["What is the capital of France?", "Name a colour.", "How many legs has a spider?",
             "Who wrote Hamlet?", "What is two plus two?", "Where do penguins live?", "What do bees make?",
             "Summarise: a tedious, joyless slog of a film."]


def models(backbone):
    """(one-token classifier, multi-token classifier, generator) with the same 20 vectors."""
    template = sp.build_template("Review: {text}\nSentiment: {label}", "prefix", 20)
    plain = sp.Verbalizer.from_spec(["negative", "positive"])
    words = sp.PromptedModel.zero_shot(backbone, "Review: {text}\nSentiment: {label}", plain).word_ids
    vectors = sp.initial_embeddings("labels", 20, backbone.input_embedding_matrix(), backbone.tokenizer,
                                    label_word_ids=words, generator=torch.Generator().manual_seed(0))
    one = sp.PromptedModel(backbone, sp.SoftPrompt(vectors), template, plain, max_length=256)
    multi = sp.PromptedModel(backbone, sp.SoftPrompt(vectors), template,
                             sp.Verbalizer.from_spec(["negative", "positive"], MULTI), max_length=256)
    generator = sp.PromptedModel(backbone, sp.SoftPrompt(vectors[:8]),
                                 sp.build_template("Q: {text}\nA: {target}", "prefix", 8), None, max_length=256)
    return one, multi, generator


def torch_scores(model, texts) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.class_scores(model.make_batch([{"text": t} for t in texts[i:i + 32]],
                                                              label_field=None)).float()
                          for i in range(0, len(texts), 32)])


def compare(scores: torch.Tensor, reference: torch.Tensor) -> dict:
    return {"max_abs_diff": float((scores - reference).abs().max()),
            "same_label": float((scores.argmax(-1) == reference.argmax(-1)).float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    texts = [row["text"] for row in sp.load_task("rotten_tomatoes").test[: args.rows]]
    fp32 = sp.load_backbone("smollm2-135m", dtype=torch.float32)
    bf16 = sp.load_backbone("smollm2-135m", dtype=torch.bfloat16)
    ref = {name: torch_scores(m, texts) for name, m in zip(("one-token", "multi-token"), models(fp32)[:2])}
    out: dict = {"rows": len(texts), "tasks": {}}
    for name, model in zip(("one-token", "multi-token"), models(bf16)[:2]):
        out["tasks"].setdefault(name, {})["torch bf16"] = compare(torch_scores(model, texts), ref[name])
    python = str(ROOT / VLLM_VENV / "bin" / "python")
    folder = str(builtin_backbone_dir("smollm2-135m"))
    for precision, backbone in (("float32", fp32), ("bfloat16", bf16)):
        port = free_port()
        command = vllm_command(python, folder, port, dtype=precision, max_model_len=2048,
                               extra=["--enforce-eager"])
        with started_vllm_server(command, port, ROOT / "runs" / "vllm" / f"parity-{precision}.log") as url:
            client = VLLMClient(url)
            one, multi, generator = models(backbone)
            for name, model in (("one-token", one), ("multi-token", multi)):
                results = client.classify(model, texts)
                scores = torch.tensor([[r.scores[label] for label in model.labels] for r in results])
                out["tasks"][name][f"vllm {precision}"] = compare(scores, ref[name])
                print(name, precision, out["tasks"][name][f"vllm {precision}"], flush=True)
            if precision == "float32":
                want = run_requests(fp32, [Request(generator, q, "generate", max_new_tokens=24)
                                           for q in QUESTIONS])
                got = [client.generate(generator, q, max_new_tokens=24) for q in QUESTIONS]
                out["greedy_fp32_identical"] = sum(a.text == b.text for a, b in zip(want, got))
                out["greedy_questions"] = len(QUESTIONS)
    lines = [f"### Scores through vLLM vs softprompt's torch path in fp32 (smollm2-135m, {len(texts)} rotten_tomatoes "
             f"rows, 20-token prompt)", "", "| label words | path | max \\|Δ class log-prob\\| | same label |",
             "|---|---|---|---|"]
    for name, paths in out["tasks"].items():
        for path, row in paths.items():
            lines.append(f"| {name} | {path} | {row['max_abs_diff']:.2g} | {100 * row['same_label']:.1f}% |")
    lines.append("")
    lines.append(f"Greedy generations in fp32, torch vs vLLM: {out['greedy_fp32_identical']} of "
                 f"{out['greedy_questions']} identical (24 tokens each).")
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(HERE, "vllm_parity", out, table)


if __name__ == "__main__":
    main()
