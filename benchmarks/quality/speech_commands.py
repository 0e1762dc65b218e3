"""Spoken commands with a frozen Whisper tiny.en: zero-shot transcription vs prompt-tuned label-word scoring.

Data: the SYNTHETIC espeak-ng spoken-command set (softprompt.data.speech; test voices/speeds/pitches unseen in
training). Methods, all scored by accuracy on the test split:

- zero-shot transcription: greedy `generate`, text lower-cased and stripped of punctuation, the prediction is
  the command word found in it (first match), else wrong;
- zero-shot label words: the ten label words scored by the frozen decoder with no prompt;
- decoder prompt: n soft tokens after <|startoftranscript|><|notimestamps|>, trained on label-word likelihood;
- decoder + encoder prompt: the same plus m trained vectors appended to the encoder states.

The encoder is frozen and sees only audio, so every clip is encoded once and the prompts train on the cached
states. Adam, constant learning rate, best validation accuracy of the checkpoints every `--eval-every` steps.

    PYTHONPATH=src python benchmarks/quality/speech_commands.py            # writes benchmarks/quality/results/speech_commands.*

Takes ~10 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import torch

from softprompt.data.speech import COMMANDS, speech_commands_synth
from softprompt.kinds.speech.backbone import load_whisper_backbone
from softprompt.kinds.speech.model import SpeechPromptedModel
from softprompt.prompts import SoftPrompt

RESULTS = Path(__file__).parent / "results"


def normalise(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def transcription_accuracy(backbone, rows) -> tuple[float, list[str]]:
    texts = backbone.transcribe([r["audio"] for r in rows], max_new_tokens=12)
    hits = 0
    for row, text in zip(rows, texts):
        found = next((w for w in normalise(text) if w in COMMANDS), None)
        hits += found == row["label"]
    return hits / len(rows), texts


@torch.no_grad()
def accuracy(model, rows, batch_size=32) -> float:
    hits = 0
    for start in range(0, len(rows), batch_size):
        batch = model.make_batch(rows[start:start + batch_size])
        hits += int((model.class_scores(batch).argmax(-1) == batch["targets"]).sum())
    return hits / len(rows)


def train(model, train_rows, val_rows, *, steps, batch_size, lr, eval_every, seed) -> dict:
    optimiser = torch.optim.Adam(model.prompt.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    best = {"validation_accuracy": accuracy(model, val_rows), "step": 0,
            "prompt": model.prompt.embeddings.detach().clone()}
    history = [{"step": 0, "validation_accuracy": best["validation_accuracy"]}]
    start = time.perf_counter()
    for step in range(1, steps + 1):
        picks = torch.randint(0, len(train_rows), (batch_size,), generator=g).tolist()
        loss, figures = model.loss(model.make_batch([train_rows[i] for i in picks]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % eval_every == 0 or step == steps:
            val = accuracy(model, val_rows)
            history.append({"step": step, "loss": round(loss.item(), 4), "validation_accuracy": val})
            print(f"  step {step}: loss {loss.item():.3f}, validation {val:.3f}", flush=True)
            if val > best["validation_accuracy"]:
                best = {"validation_accuracy": val, "step": step, "prompt": model.prompt.embeddings.detach().clone()}
    with torch.no_grad():
        model.prompt.embeddings.copy_(best["prompt"])
    return {"best_step": best["step"], "best_validation_accuracy": best["validation_accuracy"],
            "train_seconds": round(time.perf_counter() - start, 1), "history": history}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--decoder-tokens", type=int, default=8)
    parser.add_argument("--encoder-tokens", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    backbone = load_whisper_backbone()
    data = speech_commands_synth()
    print({k: len(v) for k, v in data.items()}, flush=True)

    results: dict = {"dataset": "speech-commands-synth (espeak-ng, SYNTHETIC)", "backbone": backbone.name,
                     "splits": {k: len(v) for k, v in data.items()}, "args": vars(args),
                     "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "methods": {}}
    t = time.perf_counter()
    acc, texts = transcription_accuracy(backbone, data["test"])
    results["methods"]["zero-shot transcription + string match"] = {
        "test_accuracy": acc, "seconds": round(time.perf_counter() - t, 1),
        "examples": [[r["label"], x] for r, x in list(zip(data["test"], texts))[:20]]}
    print(f"zero-shot transcription: {acc:.3f}", flush=True)

    t = time.perf_counter()
    cached = {}
    with torch.no_grad():
        for split, rows in data.items():
            out = []
            for start in range(0, len(rows), 16):
                chunk = rows[start:start + 16]
                states = backbone.encode(backbone.features([r["audio"] for r in chunk])).to(torch.float16)
                out += [{"label": r["label"], "encoder_states": s} for r, s in zip(chunk, states)]
            cached[split] = out
    print(f"encoded every clip in {time.perf_counter() - t:.0f} s", flush=True)

    zero = SpeechPromptedModel(backbone, SoftPrompt(torch.zeros(0, backbone.hidden_size)), COMMANDS)
    results["methods"]["zero-shot label words (no prompt)"] = {"test_accuracy": accuracy(zero, cached["test"])}
    print(f"zero-shot label words: {results['methods']['zero-shot label words (no prompt)']['test_accuracy']:.3f}")

    for name, enc in (("prompt-tuned: decoder prompt", 0), ("prompt-tuned: decoder + encoder prompt", args.encoder_tokens)):
        print(name, flush=True)
        g = torch.Generator().manual_seed(args.seed)
        prompt = SpeechPromptedModel.initial_prompt(backbone, args.decoder_tokens, encoder_tokens=enc, generator=g)
        torch.manual_seed(args.seed)
        model = SpeechPromptedModel(backbone, prompt, COMMANDS, encoder_tokens=enc)
        figures = train(model, cached["train"], cached["validation"], steps=args.steps, batch_size=args.batch_size,
                        lr=args.lr, eval_every=args.eval_every, seed=args.seed)
        figures["test_accuracy"] = accuracy(model, cached["test"])
        figures["decoder_tokens"], figures["encoder_tokens"] = args.decoder_tokens, enc
        results["methods"][name] = figures
        print(f"  test accuracy {figures['test_accuracy']:.3f}", flush=True)
    results["total_seconds"] = round(time.perf_counter() - t0, 1)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speech_commands.json").write_text(json.dumps(results, indent=1))
    lines = ["# Spoken commands, frozen Whisper tiny.en (synthetic espeak-ng speech)", "",
             "SYNTHETIC data: ten Speech Commands words spoken by espeak-ng (8 voices x 3 speeds x 2 pitches, white "
             "noise at clean/20/10 dB); test speaker settings unseen in training. Not real speech.", "",
             f"Splits: {results['splits']}. {results['machine']}. Command: `PYTHONPATH=src python "
             f"benchmarks/quality/speech_commands.py --steps {args.steps} --batch-size {args.batch_size} --lr {args.lr} "
             f"--decoder-tokens {args.decoder_tokens} --encoder-tokens {args.encoder_tokens}`", "",
             "| method | test accuracy | best step (validation) |", "|---|---|---|"]
    for name, fig in results["methods"].items():
        best = f"{fig['best_step']} ({fig['best_validation_accuracy']:.3f})" if "best_step" in fig else "-"
        lines.append(f"| {name} | {fig['test_accuracy']:.3f} | {best} |")
    lines += ["", f"Total {results['total_seconds']} s."]
    (RESULTS / "speech_commands.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
