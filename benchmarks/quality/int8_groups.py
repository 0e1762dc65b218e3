"""How finely `--load-in int8` should scale its weights: one scale per row against one per group of 128 or 32
input columns, as error in the class scores against the fp32 backbone.

For each backbone: a fresh prompt initialised from the label words (the same on every holding) scores the first
`--rows` rotten_tomatoes test rows on the fp32 backbone, then on the backbone held in int8 the way `--load-in int8`
holds it (every linear layer but the output head quantised from the checkpoint's weights, the rest as loaded) at
each scale granularity, and, for scale, with every weight rounded to bf16 instead. Reports the mean and largest
|score - fp32 score| (nats) and the share of rows whose predicted label is unchanged, and the bytes the scales add.
Writes benchmarks/quality/results/int8_groups.{json,md}.

    python benchmarks/quality/int8_groups.py [--models smollm2-135m,qwen2.5-0.5b] [--rows 96]

Takes ~6 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import softprompt as sp
from softprompt.kinds.int8 import hold_int8

sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py, the shared helpers
from common import write_results  # noqa: E402

HERE = Path(__file__).parent
HOLDINGS = {"bf16 weights, no int8 (for scale)": 0, "row": None, "groups of 128": 128, "groups of 32": 32}


def scores(model, rows) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            batch = model.make_batch([{"text": r["text"]} for r in rows[start:start + 16]], label_field=None)
            out.append(model.class_scores(batch))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,qwen2.5-0.5b")
    parser.add_argument("--rows", type=int, default=96)
    args = parser.parse_args()
    task = sp.load_task("rotten_tomatoes")
    rows = task.test[: args.rows]
    results = []
    for name in args.models.split(","):
        config = sp.TrainConfig(model=name, data="rotten_tomatoes", seed=0)
        backbone = sp.load_backbone(name, dtype=torch.float32)
        reference = scores(sp.build_prompted_model(config, backbone, task), rows)
        for holding, group in HOLDINGS.items():
            backbone = sp.load_backbone(name, dtype=torch.float32)
            if group == 0:  # the bf16 rounding of every weight alone: the error a bf16 backbone would add
                backbone.model.to(torch.bfloat16).to(torch.float32)
            else:
                hold_int8(backbone.model, group)
            got = scores(sp.build_prompted_model(config, backbone, task), rows)
            error = (got - reference).abs()
            results.append({"model": name, "holding": holding, "rows": len(rows),
                            "mean_abs_error": error.mean().item(), "max_abs_error": error.max().item(),
                            "same_label": (got.argmax(-1) == reference.argmax(-1)).float().mean().item(),
                            "scale_bytes_per_weight": 4 / group if group else 0.0,
                            "int8": group != 0})
            r = results[-1]
            print(f"{name} {holding}: mean |d| {r['mean_abs_error']:.4f}, max {r['max_abs_error']:.4f}, "
                  f"same label {100 * r['same_label']:.1f}%", flush=True)
    lines = [f"Class scores on the int8 backbone against fp32: a fresh label-word prompt, the first {len(rows)} "
             "rotten_tomatoes test rows.", "",
             "| backbone | scales | mean abs error (nats) | largest | same label | scale bytes per weight |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['holding']} | {r['mean_abs_error']:.4f} | {r['max_abs_error']:.4f} | "
              f"{100 * r['same_label']:.1f}% | {r['scale_bytes_per_weight']:.3f} |" for r in results]
    write_results(HERE, "int8_groups", results, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
