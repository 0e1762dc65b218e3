"""Look inside a learned prompt: nearest vocabulary tokens, norms, projection to a hard prompt, prompt-to-prompt
similarity.

Soft prompts are vectors in the backbone's input embedding space, so each one can be read through the real
tokens it lies closest to (by cosine similarity or Euclidean distance). Learned prompts often drift away from
every real token -- their norms and the projection gap (accuracy of the soft prompt vs the same prompt with
each vector replaced by its nearest token) show how far.

Examples:
    >>> report = explain_prompt(model, top_k=5)                        # doctest: +SKIP
    >>> report["tokens"][0]["neighbours"][0]
    {'token': ' great', 'id': 1049, 'score': 0.41}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..formats import atomic_write
from ..kinds.text_model import TextPromptedModel
from ..methods.dept import DecomposedPrompt
from ..prompts import SoftPrompt

Metric = Literal["cosine", "l2"]


def _input_vectors(model: TextPromptedModel) -> torch.Tensor:
    if model.prompt.num_input_tokens == 0:
        raise ConfigError("this prompt has no input-space vectors to read (a deep prompt lives in every layer's "
                          "keys/values, a zero-shot template has none)")
    return model.prompt().detach().float().cpu()


def similarity(vectors: torch.Tensor, matrix: torch.Tensor, metric: Metric) -> torch.Tensor:
    """(n, V) scores, higher = closer: cosine similarity, or minus the Euclidean distance."""
    if metric == "cosine":
        return F.normalize(vectors, dim=-1) @ F.normalize(matrix, dim=-1).T
    if metric == "l2":
        return -torch.cdist(vectors, matrix)
    raise ConfigError(f"--metric {metric!r}: use cosine or l2")


def nearest_tokens(model: TextPromptedModel, top_k: int = 5, metric: Metric = "cosine") -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, token ids), each (n, top_k), of every virtual token's nearest vocabulary tokens."""
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    matrix = model.backbone.input_embedding_matrix().detach().float().cpu()
    scores = similarity(_input_vectors(model), matrix, metric)
    return scores.topk(min(top_k, matrix.shape[0]), dim=-1)


def _stats(values: torch.Tensor) -> dict[str, float]:
    return {"mean": float(values.mean()), "std": float(values.std()) if values.numel() > 1 else 0.0,
            "min": float(values.min()), "max": float(values.max())}


def explain_prompt(model: TextPromptedModel, top_k: int = 5, metric: Metric = "cosine") -> dict[str, Any]:
    """Per virtual token: its norm and nearest tokens; norm statistics of the prompt and of the vocabulary."""
    vectors = _input_vectors(model)
    matrix = model.backbone.input_embedding_matrix().detach().float().cpu()
    scores, ids = nearest_tokens(model, top_k, metric)
    tokenizer = model.backbone.tokenizer
    tokens = []
    for index in range(vectors.shape[0]):
        tokens.append({"index": index, "norm": float(vectors[index].norm()),
                       "neighbours": [{"token": tokenizer.decode([int(i)]), "id": int(i), "score": round(float(s), 4)}
                                      for s, i in zip(scores[index], ids[index])]})
    prompt_norms, vocab_norms = vectors.norm(dim=-1), matrix.norm(dim=-1)
    return {"metric": metric, "top_k": top_k, "num_virtual_tokens": vectors.shape[0], "tokens": tokens,
            "norms": {"prompt": _stats(prompt_norms), "vocabulary": _stats(vocab_norms),
                      "prompt_over_vocabulary": float(prompt_norms.mean() / vocab_norms.mean())},
            "nearest_score_mean": float(scores[:, 0].mean())}


def projected(model: TextPromptedModel, metric: Metric = "cosine") -> TextPromptedModel:
    """The hard prompt: the same model with each soft vector replaced by its nearest real token's embedding."""
    _, ids = nearest_tokens(model, 1, metric)
    matrix = model.backbone.input_embedding_matrix().detach()
    vectors = matrix[ids[:, 0].to(matrix.device)].float()
    prompt = model.prompt
    if isinstance(prompt, DecomposedPrompt):  # only the soft vectors become tokens: DePT's text offset stays
        return model.with_prompt(DecomposedPrompt(vectors, prompt.offset_a, prompt.offset_b))
    return model.with_prompt(SoftPrompt(vectors))


def compare_prompts(first: TextPromptedModel, second: TextPromptedModel) -> dict[str, Any]:
    """Token-wise cosine similarity (aligned positions), each token's best match in the other prompt, and the
    cosine of the two prompts' mean vectors."""
    a, b = _input_vectors(first), _input_vectors(second)
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"the prompts live in different spaces (hidden size {a.shape[1]} vs {b.shape[1]})")
    matrix = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T                     # (n, m)
    aligned = matrix.diagonal()
    return {"tokenwise": [round(float(x), 4) for x in aligned],
            "tokenwise_mean": float(aligned.mean()),
            "best_match_mean": float(matrix.max(dim=1).values.mean()),
            "mean_vector_cosine": float(F.cosine_similarity(a.mean(0), b.mean(0), dim=0)),
            "sizes": [a.shape[0], b.shape[0]], "matrix": matrix}


def plot_neighbours(report: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Heatmap: one row per virtual token, its top-k neighbours' scores, each cell labelled with the token."""
    import matplotlib  # start-up time: plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up time: plots only


    rows = report["tokens"]
    scores = torch.tensor([[n["score"] for n in row["neighbours"]] for row in rows])
    fig, ax = plt.subplots(figsize=(2 + 1.6 * scores.shape[1], 1 + 0.32 * len(rows)))
    image = ax.imshow(scores.numpy(), aspect="auto", cmap="viridis")
    for i, row in enumerate(rows):
        for j, neighbour in enumerate(row["neighbours"]):
            ax.text(j, i, repr(neighbour["token"])[1:-1][:14], ha="center", va="center", fontsize=7,
                    color="white" if scores[i, j] < scores.mean() else "black")
    ax.set_xlabel(f"nearest vocabulary tokens (rank 1 = closest, {report['metric']})")
    ax.set_ylabel("virtual token")
    ax.set_xticks(range(scores.shape[1]), [str(k + 1) for k in range(scores.shape[1])])
    ax.set_yticks(range(len(rows)), [f"{r['index']} (|v| {r['norm']:.2f})" for r in rows], fontsize=7)
    fig.colorbar(image, ax=ax, label="similarity" if report["metric"] == "cosine" else "minus distance")
    ax.set_title(title or "prompt tokens and their nearest vocabulary tokens", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
