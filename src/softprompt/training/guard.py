"""Divergence guard: a non-finite loss or an exploding gradient rolls training back instead of ruining it.

The guard keeps the last good state (trainable parameters and optimiser state, refreshed every few good
steps). A bad step -- non-finite loss or gradient norm, or a gradient norm `explode` times the median of the
recent ones -- is dropped: the state goes back to the last good one and the learning rate (and the schedule's
base) is multiplied by `factor`. After `max_rollbacks` rollbacks training stops with `TrainingDivergedError`.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections import deque

import torch

from ..errors import SoftPromptError


class TrainingDivergedError(SoftPromptError):
    """Training kept producing non-finite losses or exploding gradients after repeated rollbacks."""


class DivergenceGuard:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, *,
                 max_rollbacks: int = 3, factor: float = 0.5, explode: float = 1e3) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.max_rollbacks, self.factor, self.explode = max_rollbacks, factor, explode
        self.rollbacks = 0
        self._norms: deque[float] = deque(maxlen=20)
        self._good: tuple[dict, dict] | None = None
        self.remember()

    def remember(self) -> None:
        """Take the current state as the last good one."""
        params = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        self._good = (params, copy.deepcopy(self.optimizer.state_dict()))

    def state_dict(self) -> dict:
        return {"rollbacks": self.rollbacks, "norms": list(self._norms), "good_params": self._good[0],
                "good_optimizer": self._good[1]}

    def load_state_dict(self, state: dict) -> None:
        self.rollbacks = state["rollbacks"]
        self._norms = deque(state["norms"], maxlen=self._norms.maxlen)
        self._good = (state["good_params"], state["good_optimizer"])

    def problem(self, losses: list[float], grad_norm: float) -> str | None:
        """Why this step is bad, or None (a good step's gradient norm joins the recent ones)."""
        if not all(math.isfinite(x) for x in losses):
            return "non-finite loss"
        if not math.isfinite(grad_norm):
            return "non-finite gradient norm"
        if len(self._norms) >= 5 and grad_norm > self.explode * statistics.median(self._norms):
            return f"gradient norm {grad_norm:.3g} is over {self.explode:g}x the recent median"
        self._norms.append(grad_norm)
        return None

    @torch.no_grad()
    def roll_back(self, step: int, reason: str) -> dict:
        """Restore the last good state and lower the learning rate; returns a record for the metrics log."""
        self.rollbacks += 1
        lrs = [group["lr"] for group in self.optimizer.param_groups]  # several groups: an encoder's head has its own
        lr = lrs[0]
        if self.rollbacks > self.max_rollbacks:
            raise TrainingDivergedError(
                f"training diverged at step {step} ({reason}) after {self.max_rollbacks} rollbacks, each halving "
                f"the learning rate (now {lr:.3g}); lower --lr or --max-grad-norm, or raise --max-rollbacks")
        params, optimizer_state = self._good
        named = dict(self.model.named_parameters())
        for name, value in params.items():
            named[name].copy_(value)
        self.optimizer.load_state_dict(copy.deepcopy(optimizer_state))
        for group, before in zip(self.optimizer.param_groups, lrs):
            group["lr"] = before * self.factor
        if hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [base * self.factor for base in self.scheduler.base_lrs]
        return {"step": step, "split": "event", "event": "rollback", "reason": reason,
                "rollbacks": self.rollbacks, "lr": lr * self.factor}
