"""`--method multitask`: multitask prompt tuning (MPT, Wang et al., ICLR 2023). Stage 1 (training/multitask.py)
trains one shared prompt and a rank-r factor per source task; its file holds the shared prompt and the factors.
Stage 2 starts a `--method prompt` run from that file: a fresh factor on the shared prompt (`target_prompt`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..declare import OptionGroup, option
from ..errors import ConfigError


@dataclass(frozen=True)
class MultitaskOptions:
    """Multitask prompt tuning: stage 1 (--method multitask) and stage 2 (--init-from a shared prompt)."""

    tasks: str | None = option(None, "--method multitask: the source tasks, name=data,name=data (built-in names or "
                                     "folders).", "mpt", flag="tasks")
    rank: int = option(1, "Multitask prompt tuning: rank of each task's factor (stage 1 and stage 2).",
                       "mpt", flag="mpt_rank")
    train_shared: bool = option(False, "Stage 2 (--init-from a multitask shared prompt): train the shared prompt "
                                       "too, not only the new task's factor.", "mpt", flag="mpt_train_shared")
    teachers: str | None = option(None, "--method multitask: distil each source task from its single-task prompt, "
                                        "name=PROMPT.safetensors,... (files from `softprompt train` on the same "
                                        "backbone; tasks not named train on their labels only).",
                                  "mpt", flag="mpt_teachers")
    distill_weight: float = option(1.0, "--mpt-teachers: weight of the distillation term (KL from the teacher's "
                                        "class distribution) added to each task's cross-entropy.",
                                   "mpt", flag="mpt_distill_weight")
    distill_temperature: float = option(2.0, "--mpt-teachers: softmax temperature of teacher and student class "
                                             "scores in the distillation term (the term is scaled by T^2).",
                                        "mpt", flag="mpt_distill_temperature")


OPTIONS = OptionGroup("mpt", "Method: multitask prompt tuning (--method multitask, --init-from a shared "
                      "prompt)", MultitaskOptions)
TENSORS = ("shared_prompt",)  # + each source task's factors


class TaskPrompt(nn.Module):
    """One task's view of a shared prompt: `shared ∘ (u vᵀ)`, shaped and used like a `SoftPrompt`."""

    method = "prompt"

    def __init__(self, shared: nn.Parameter, rank: int = 1, u: torch.Tensor | None = None,
                 v: torch.Tensor | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"--mpt-rank must be >= 1, got {rank}")
        self.shared = shared
        n, d = shared.shape
        self.u = nn.Parameter(u.detach().float().clone() if u is not None else torch.ones(n, rank))
        self.v = nn.Parameter(v.detach().float().clone() if v is not None else torch.full((d, rank), 1.0 / rank))

    @property
    def num_virtual_tokens(self) -> int:
        return self.shared.shape[0]

    num_input_tokens = num_virtual_tokens

    @property
    def hidden_size(self) -> int:
        return self.shared.shape[1]

    @property
    def rank(self) -> int:
        return self.u.shape[1]

    def forward(self) -> torch.Tensor:
        return self.shared * (self.u @ self.v.T)  # (n, d)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Saved as a plain prompt: the task's materialised vectors."""
        return {"prompt_embeddings": self().detach().to("cpu", torch.float32).contiguous()}


def target_prompt(tensors: dict[str, torch.Tensor], rank: int, train_shared: bool, device) -> TaskPrompt:
    """Stage 2: a fresh factor of `rank` on the shared prompt of a multitask file (trained alone by default)."""
    shared = nn.Parameter(tensors["shared_prompt"].to(device), requires_grad=train_shared)
    return TaskPrompt(shared, rank).to(device)


def from_tensors(tensors: Mapping[str, torch.Tensor], hidden_size: int) -> nn.Module:
    raise ConfigError("a multitask shared-prompt file holds no single task's prompt: use a task's prompt file "
                      "written beside it, or adapt it to a new task with `softprompt train --init-from`")


def adapt(config, tensors: Mapping[str, torch.Tensor], device) -> TaskPrompt:
    """Stage 2 (`--init-from` a shared prompt): a fresh rank --mpt-rank factor on the shared prompt."""
    return target_prompt(dict(tensors), config.mpt.rank, config.mpt.train_shared, device)
