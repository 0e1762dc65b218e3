"""`softprompt explain`: nearest vocabulary tokens, norms and a heatmap of a prompt; its projection to a hard
prompt; or the similarity of two prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..data import load_task
from ..errors import ConfigError
from ..evaluation import evaluate
from ..kinds.table import kind_of, load_prompted_model
from ..protocols import Capability
from ..tools.explain import compare_prompts, explain_prompt, plot_neighbours, projected
from . import app
from .common import load_for_inference


@app.command()
def explain(
    prompts: Annotated[list[Path], typer.Argument(help="One prompt file, or two to compare.")],
    top_k: Annotated[int, typer.Option(help="Nearest vocabulary tokens per virtual token.")] = 5,
    metric: Annotated[str, typer.Option(help="cosine or l2.")] = "cosine",
    project: Annotated[bool, typer.Option("--project", help="Replace each soft token by its nearest real token "
                                                             "and evaluate that hard prompt on --data.")] = False,
    data: Annotated[Optional[str], typer.Option(help="Dataset for --project (built-in name or folder).")] = None,
    split: Annotated[str, typer.Option(help="Split for --project.")] = "validation",
    limit: Annotated[int, typer.Option(help="--project: evaluate the first N rows (0 = all).")] = 500,
    plot: Annotated[Optional[Path], typer.Option(help="Heatmap PNG (default: beside the prompt, "
                                                      "NAME.explain.png).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Per virtual token, its nearest vocabulary tokens (with scores) and norm, against the vocabulary's norms;
    writes a heatmap. With two prompts: token-wise and overall similarity."""

    if len(prompts) not in (1, 2):
        raise ConfigError(f"explain takes one prompt file, or two to compare (got {len(prompts)})")
    if metric not in ("cosine", "l2"):
        raise ConfigError(f"--metric {metric!r}: use cosine or l2")
    if project and not data:
        raise ConfigError("--project evaluates the hard prompt on a dataset: add --data NAME_OR_FOLDER")
    model, meta = load_for_inference(prompts[0], None, precision, device)
    kind_of(model).require(Capability.EXPLAIN, str(prompts[0]))
    if len(prompts) == 2:

        other = load_prompted_model(prompts[1], model.backbone)  # same backbone, or IncompatiblePromptError
        result = compare_prompts(model, other)
        result.pop("matrix")
        if as_json:
            print(json.dumps(result))
            return
        print(f"{prompts[0]} vs {prompts[1]}  ({result['sizes'][0]} and {result['sizes'][1]} virtual tokens)")
        print("token-wise cosine  " + " ".join(f"{x:.2f}" for x in result["tokenwise"]))
        print(f"mean token-wise {result['tokenwise_mean']:.3f}   best match {result['best_match_mean']:.3f}   "
              f"mean vectors {result['mean_vector_cosine']:.3f}")
        return

    report = explain_prompt(model, top_k, metric)  # type: ignore[arg-type]
    picture = plot or prompts[0].with_name(prompts[0].stem + ".explain.png")
    report["plot"] = str(plot_neighbours(report, picture, title=f"{prompts[0].name} ({meta['backbone']['name']})"))
    if project:

        task = load_task(data, text_fields=model.input_fields, labels=meta.get("labels"),
                         task=model.task.value)
        rows = task.split(split)
        soft = evaluate(model, rows, label_field=task.label_field, limit=limit, progress=False)
        hard = evaluate(projected(model, metric), rows, label_field=task.label_field, limit=limit,  # type: ignore[arg-type]
                        progress=False)
        key = "accuracy" if "accuracy" in soft else "loss"
        report["projection"] = {"metric": key, "soft": soft[key], "projected": hard[key],
                                "gap": soft[key] - hard[key], "split": split, "n": soft.get("n")}
    if as_json:
        print(json.dumps(report))
        return
    norms = report["norms"]
    print(f"{prompts[0]}: {report['num_virtual_tokens']} virtual tokens, nearest tokens by {metric}")
    for token in report["tokens"]:
        near = ", ".join(f"{n['token']!r} {n['score']:.2f}" for n in token["neighbours"])
        print(f"{token['index']:>4}  |v| {token['norm']:6.2f}  {near}")
    print(f"norms: prompt {norms['prompt']['mean']:.2f} ± {norms['prompt']['std']:.2f} "
          f"(min {norms['prompt']['min']:.2f}, max {norms['prompt']['max']:.2f}); vocabulary "
          f"{norms['vocabulary']['mean']:.2f} ± {norms['vocabulary']['std']:.2f}; ratio "
          f"{norms['prompt_over_vocabulary']:.2f}")
    if "projection" in report:
        p = report["projection"]
        print(f"projection on {split} ({p['n']} rows): soft {p['metric']} {p['soft']:.4f}, projected "
              f"{p['projected']:.4f}, gap {p['gap']:+.4f}")
    print(f"heatmap: {report['plot']}")
