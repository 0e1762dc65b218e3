"""The state of a training run, in one object whose state dict is the checkpoint.

`RunState` holds everything that changes while a run trains -- the trainable parameters (through the model),
the optimiser, the scheduler, the divergence guard, the data stream's position, the RNGs and the loop's own
bookkeeping (`Progress`: step, history, best state, counters). `state_dict()` is what `checkpoint.pt` holds;
`load_state_dict()` puts a run back exactly where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..errors import ConfigError
from .checkpoint import rng_state, set_rng_state
from .guard import DivergenceGuard


@dataclass
class Job:
    """What the loop trains: one task's prompted model (`_single_task_job`) or several tasks'
    (`training.multitask.multitask_job`). The loop only reads this."""

    name: str                                     # for the plot's title and the result's summary
    model: Any                                    # a Prompted (or the multitask model): make_batch / loss
    train_rows: list[dict]
    label_field: str
    stream: Any                                   # yields lists of row indices; has state_dict / load_state_dict
    validate: Callable[[], dict]                  # -> a result with the primary metric (see evaluation)
    save: Callable[[Path, Any, dict], Path]       # (folder, model, metadata) -> the artefact's path
    resolved: dict[str, Any]                      # what config.yaml records beyond the config itself
    metadata: dict[str, Any]                      # what every saved file records (init, placement)


@dataclass
class Progress:
    """The loop's bookkeeping: where it is, what it logged, the best validation so far and running sums."""

    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_score: float = -math.inf
    best_step: int = 0
    best_result: dict = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    evals_without_gain: int = 0
    train_seconds: float = 0.0
    seen: int = 0
    last_loss: float = math.nan
    running_loss: float = 0.0
    running_acc: float = 0.0
    running_n: int = 0
    running_figures: dict[str, float] = field(default_factory=dict)  # a model's own figures (per-task losses, ...)

    def add(self, losses: list[float], accuracies: list[float], figures: dict[str, float]) -> None:
        """A step that counted: its micro-batches' losses, accuracies and other figures (each summed over the
        micro-batches) join the running means."""
        self.running_loss += sum(losses)
        self.running_acc += sum(accuracies)
        self.running_n += len(losses)
        for name, value in figures.items():
            self.running_figures[name] = self.running_figures.get(name, 0.0) + value

    def take_means(self) -> tuple[float, float, dict[str, float]]:
        """(mean loss, mean accuracy, mean of each other figure) since the last call; the sums start again."""
        n = self.running_n
        means = (self.running_loss / n, self.running_acc / n, {k: v / n for k, v in self.running_figures.items()})
        self.running_loss, self.running_acc, self.running_n, self.running_figures = 0.0, 0.0, 0, {}
        return means


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters a run trains, by name (those that require gradients and hold numbers)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad and p.numel()}


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters (the best state so far)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def restore(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


@dataclass
class RunState:
    """Everything a run needs to continue exactly where it stopped."""

    config: dict[str, Any]
    total_steps: int
    processes: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    guard: DivergenceGuard
    stream: Iterator[list[int]]     # BatchStream or TaskMixStream: has state_dict / load_state_dict
    scaler: torch.amp.GradScaler | None
    progress: Progress = field(default_factory=Progress)

    def state_dict(self) -> dict[str, Any]:
        loop = asdict(self.progress)
        loop.pop("step")
        return {"config": self.config, "step": self.progress.step, "total_steps": self.total_steps,
                "processes": self.processes,
                "trainable": {n: p.detach().clone() for n, p in trainable_parameters(self.model).items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "guard": self.guard.state_dict(), "stream": self.stream.state_dict(), "rng": rng_state(),
                **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}), "loop": loop}

    def load_state_dict(self, state: dict[str, Any], where: str) -> None:
        if state.get("processes", 1) != self.processes:
            raise ConfigError(f"--resume {where}: the run was checkpointed with {state.get('processes', 1)} "
                              f"process(es) and continues with {self.processes}: launch it the same way")
        names = list(trainable_parameters(self.model))
        if sorted(state["trainable"]) != sorted(names):
            raise ConfigError(f"--resume {where}: the checkpoint's trainable parameters do not match this model's "
                              f"({len(state['trainable'])} vs {len(names)} tensors)")
        restore(self.model, state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.guard.load_state_dict(state["guard"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.stream.load_state_dict(state["stream"])
        self.progress = Progress(step=state["step"], **state["loop"])
        set_rng_state(state["rng"])
