"""Evaluation of a prompted model on labelled rows."""

from __future__ import annotations

import math
import time
from typing import Mapping, Sequence

import torch

from .progress import bar as progress_bar
from .protocols import Prompted, TaskType


def _batches(rows: Sequence[Mapping], batch_size: int, fields: Sequence[str]):
    # Sorting by length keeps padding low; results are put back in input order by the caller.
    # Only text has a length worth sorting by (an image or audio field is a tensor).
    order = sorted(range(len(rows)), key=lambda i: sum(len(v) for f in fields if isinstance(v := rows[i].get(f, ""), str)))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        yield chunk, [rows[i] for i in chunk]


@torch.no_grad()
def predict_scores(model: Prompted, rows: Sequence[Mapping], *, batch_size: int = 32,
                   progress: bool = False) -> torch.Tensor:
    """Class scores (N, C) for rows, in input order."""
    scores = torch.empty(len(rows), len(model.labels))
    bar = progress_bar(len(rows), "scoring", progress, leave=False)
    for index, chunk in _batches(rows, batch_size, model.input_fields):
        batch = {k: v.to(model.backbone.device) for k, v in model.make_batch(chunk, label_field=None).items()}
        scores[index] = model.class_scores(batch).float().cpu()
        bar.update(len(chunk))
    bar.close()
    return scores


def classification_metrics(predicted: torch.Tensor, gold: torch.Tensor, labels: Sequence[str]) -> dict:
    accuracy = (predicted == gold).float().mean().item()
    f1s = []
    for c in range(len(labels)):
        tp = ((predicted == c) & (gold == c)).sum().item()
        fp = ((predicted == c) & (gold != c)).sum().item()
        fn = ((predicted != c) & (gold == c)).sum().item()
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s)}


@torch.no_grad()
def evaluate(model: Prompted, rows: Sequence[Mapping], *, label_field: str = "label", batch_size: int = 32,
             limit: int = 0, progress: bool = False) -> dict:
    """Classification: accuracy and macro-F1. Generation: mean target-token loss and perplexity.

    Examples:
        >>> evaluate(model, task.test, limit=500)   # doctest: +SKIP
        {'accuracy': 0.87, 'macro_f1': 0.86, 'n': 500, 'seconds': 12.5}
    """
    rows = list(rows[:limit] if limit else rows)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        if model.task is TaskType.CLASSIFICATION:
            scores = predict_scores(model, rows, batch_size=batch_size, progress=progress)
            gold = torch.tensor([model.labels.index(str(r[label_field])) for r in rows])
            result = classification_metrics(scores.argmax(-1), gold, model.labels)
        else:
            total, count = 0.0, 0
            for _, chunk in _batches(rows, batch_size, model.input_fields):
                batch = {k: v.to(model.backbone.device) for k, v in model.make_batch(chunk, label_field).items()}
                loss, _ = model.loss(batch)
                tokens = int((batch["labels"] != -100).sum())
                total, count = total + loss.item() * tokens, count + tokens
            result = {"loss": total / max(count, 1), "perplexity": math.exp(min(total / max(count, 1), 50))}
    finally:
        model.train(was_training)
    result.update({"n": len(rows), "seconds": round(time.perf_counter() - start, 3)})
    return result


def primary_metric(result: Mapping) -> float:
    """Higher is better: accuracy for classification, negative loss for generation."""
    return float(result["accuracy"]) if "accuracy" in result else -float(result["loss"])
