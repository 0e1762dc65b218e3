"""The run's picture: training loss and validation metric against steps."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..formats import atomic_write


def plot_history(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
    import matplotlib  # start-up time: plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up time: plots only


    train = [h for h in history if h.get("split") == "train"]
    evals = [h for h in history if h.get("split") == "validation"]
    metric = "accuracy" if evals and "accuracy" in evals[0] else "loss"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot([h["step"] for h in train], [h["loss"] for h in train], lw=1, color="tab:blue")
    left.set(xlabel="step", ylabel="training loss", title="loss")
    left.grid(alpha=0.3)
    if evals:
        right.plot([h["step"] for h in evals], [h[metric] for h in evals], marker="o", color="tab:green")
    right.set(xlabel="step", ylabel=f"validation {metric}", title=f"validation {metric}")
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    written = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return written
