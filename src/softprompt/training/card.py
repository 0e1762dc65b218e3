"""The model card written next to every trained prompt (OUTPUT/README.md): task, data, settings and the measured
validation figures, and how to use the file."""

from __future__ import annotations

from typing import Any

from ..config import TrainConfig
from ..methods import METHODS
from ..version import __version__


def _figures(result: dict[str, Any] | None) -> str:
    if not result:
        return "not measured"
    return ", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in result.items() if key not in ("seconds",))


def _variant(config: TrainConfig) -> str:
    """What the method adds to the method line (a residual MLP, DePT's offset)."""
    card = METHODS[config.method].card
    return card(config) if card else ""


def model_card(config: TrainConfig, training: dict[str, Any], resolved: dict[str, Any], *, backbone: str, task: str,
               prompt_file: str) -> str:
    labels, template = resolved.get("labels"), resolved.get("template")
    rows = [("backbone", f"`{backbone}` (frozen; the prompt file carries its fingerprint)"),
            ("task", task + (f" over {len(labels)} labels: {', '.join(labels)}" if labels else "")),
            ("method", f"{config.method.value}, {resolved.get('num_virtual_tokens')} virtual tokens, placement "
                       f"{resolved.get('placement')}, init {config.init.value}{_variant(config)}"),
            ("template", "`" + template.replace("\n", "\\n") + "`" if template else "—"),
            ("data", f"{training.get('data')} ({training.get('train_examples')} training examples)"),
            ("optimisation", f"lr {config.lr}, batch {config.batch_size}, {training.get('steps')} steps, "
                             f"{training.get('examples_seen')} examples seen, seed {config.seed}"),
            ("trainable parameters", f"{training.get('trainable_params'):,}"),
            ("best validation", f"{_figures(training.get('validation'))} at step {training.get('best_step')}"),
            ("training time", f"{training.get('train_seconds')} s"), ("softprompt", __version__)]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    example = "predict --prompt {0} \"some text\"".format(prompt_file)
    return f"""# Soft prompt: {training.get('data')} on {backbone}

A prompt-tuning prompt trained with softprompt: the backbone stays frozen, and this folder's
`{prompt_file}` holds the only trained values.

| | |
|---|---|
{table}

The validation figures are those of the best evaluation during training (the prompt kept). Measure the test
split with `softprompt eval --prompt {prompt_file} --data {config.data or 'DATA'} --split test`.

## Use

```bash
softprompt {example}
softprompt serve --model {backbone} --prompts .        # HTTP, OpenAI-compatible
```

```python
import softprompt as sp

model = sp.from_pretrained("{prompt_file}")           # loads the backbone named in the file
```

Files: `{prompt_file}` (prompt and metadata), `metrics.jsonl` (every logged record), `training.png`
(curves), `config.yaml` (`softprompt train --config config.yaml` reproduces the run).
"""
