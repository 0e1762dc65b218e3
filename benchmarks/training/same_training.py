"""A restructure of the training loop or the method table must not change what it trains: fourteen tiny runs on an older checkout of
softprompt and on this one, compared bit for bit.

Each side runs in its own process with its own `src` on the path, on the random-weight tiny Llama of the tests
(tests/tiny.py, seed 0) and the tests' small sentiment set, fp32 on CPU, no compilation: a plain run, gradient
accumulation with passes and clipping, early stop, deep prompts, DePT, a generation task, multitask, no clipping
with a cosine schedule, a run whose loss turns non-finite twice (two rollbacks), a residual prompt, and prompt
transfer (`--init-from`) of a plain, a deep and a DePT prompt and of the multitask shared prompt (MPT stage 2). It compares every tensor of
each prompt file (`torch.equal`) and every record of metrics.jsonl except wall-clock seconds. Writes
benchmarks/training/results/same_training.json and exits non-zero if anything differs.

    git worktree add /tmp/softprompt-old <commit>
    python benchmarks/training/same_training.py --old-src /tmp/softprompt-old/src

Takes ~1 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: common.py, the shared helpers
from common import write_results  # noqa: E402

WORKER = r"""
import json, shutil, sys, pathlib, torch
sys.path.insert(0, sys.argv[2])  # tests/: the tiny model and the small data set
import tiny
from rows import make_sentiment_dir, write_jsonl
from safetensors.torch import load_file
from softprompt import TrainConfig, build_prompted_model, load_task, train

out = pathlib.Path(sys.argv[1])
work = out / "work"
work.mkdir()
data = make_sentiment_dir(work / "data")
gen, topic = work / "gen", work / "topic"
gen.mkdir(); topic.mkdir()
words = ["good", "bad", "fine", "fun", "dull", "warm"]
topics = [("stocks fell", "business"), ("the match ended", "sport"), ("shares rose", "business"),
          ("a late goal", "sport")]
for split in ("train", "validation", "test"):
    repeats = 4 if split == "train" else 1
    write_jsonl(gen / f"{split}.jsonl", [{"text": f"say {w}", "target": f"{w} {w}"} for w in words] * repeats)
    write_jsonl(topic / f"{split}.jsonl", [{"text": t, "label": l} for t, l in topics] * repeats)

def config(name, **options):
    base = dict(model="unused", data=str(data), output=str(work / name), max_steps=12, eval_every=4, batch_size=8,
                lr=0.1, precision="fp32", device="cpu", compile="off", log_every=1)
    return TrainConfig(**{**base, **options})

runs = {
    "plain": config("plain"),
    "accumulation_passes_clipping": config("accumulation_passes_clipping", grad_accum=2, batch_size=6,
                                           pass_tokens=40, max_grad_norm=0.5),
    "early_stop": config("early_stop", eval_every=2, patience=1, lr=0.3, max_steps=20),
    "deep": config("deep", method="deep", num_virtual_tokens=4),
    "dept": config("dept", method="dept"),
    "generation": config("generation", data=str(gen), task="generation", init="vocab", label_field="target"),
    "multitask": config("multitask", method="multitask", tasks=f"senti={data},topic={topic}", init="vocab"),
    "cosine_no_clipping": config("cosine_no_clipping", max_grad_norm=0.0, scheduler="cosine", warmup_ratio=0.2),
    "two_rollbacks": config("two_rollbacks", eval_every=0, lr=0.05),
    "residual": config("residual", reparam="residual", residual_bottleneck=8),
    "transfer": config("transfer", init_from=str(work / "plain" / "prompt.safetensors")),
    "deep_transfer": config("deep_transfer", method="deep", init_from=str(work / "deep" / "prompt.safetensors")),
    "dept_transfer": config("dept_transfer", method="dept", init_from=str(work / "dept" / "prompt.safetensors")),
    "multitask_stage2": config("multitask_stage2", init_from=str(work / "multitask" / "shared.safetensors")),
}
for name, run in runs.items():
    backbone = tiny.tiny_backbone("llama")
    model = None
    if name == "two_rollbacks":  # the loss turns non-finite at the 3rd and 7th forward pass
        task = load_task(str(data))
        model = build_prompted_model(run, backbone, task)
        loss, calls = model.loss, [0]
        def poisoned(batch, loss=loss, calls=calls):
            calls[0] += 1
            value, figures = loss(batch)
            return (value * float("nan") if calls[0] in (3, 7) else value), figures
        model.loss = poisoned
        result = train(run, backbone=backbone, task=task, model=model, progress=False)
    else:
        result = train(run, backbone=backbone, progress=False)
    torch.save(dict(load_file(str(result.prompt_path))), out / f"{name}.pt")
    shutil.copy(work / name / "metrics.jsonl", out / f"{name}.jsonl")
"""


def _without_seconds(value):
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-src", required=True, help="the src folder of an older checkout")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as scratch:
        folders = {}
        for side, src in (("old", Path(args.old_src).resolve()), ("new", ROOT / "src")):
            folders[side] = Path(scratch) / side
            folders[side].mkdir()
            env = {**os.environ, "PYTHONPATH": str(src)}
            proc = subprocess.run([sys.executable, "-c", WORKER, str(folders[side]), str(ROOT / "tests")], env=env,
                                  capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{side} side failed:\n{proc.stderr[-3000:]}")
        runs = {}
        for old_file in sorted(folders["old"].glob("*.pt")):
            old, new = torch.load(old_file), torch.load(folders["new"] / old_file.name)
            tensors = old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
            records = [_without_seconds([json.loads(line) for line in (folders[s] / f"{old_file.stem}.jsonl")
                                         .read_text().splitlines()]) for s in ("old", "new")]
            runs[old_file.stem] = {"tensors_identical": tensors, "metrics_identical": records[0] == records[1],
                                   "metrics_records": len(records[1])}
    write_results(Path(__file__).parent, "same_training", {"old_src": args.old_src, "runs": runs})
    for name, run in runs.items():
        print(f"{name:30s} prompt tensors {'identical' if run['tensors_identical'] else 'DIFFER'}, "
              f"{run['metrics_records']} metrics records {'identical' if run['metrics_identical'] else 'DIFFER'}")
    if not all(r["tensors_identical"] and r["metrics_identical"] for r in runs.values()):
        raise SystemExit("the two checkouts train differently")


if __name__ == "__main__":
    main()
