"""`--method residual`: Residual Prompt Tuning (Razdaibiedina et al., ACL Findings 2023). The prompt's vectors
pass through one bottleneck MLP shared by every token, with a skip connection, while training:

    P'_i = P_i + dropout(LayerNorm(W_up(ReLU(W_down(P_i)))))

`folded()` is the plain `SoftPrompt` of the projected vectors (dropout off): what a prompt file stores, so a
trained residual prompt costs what a plain one does at inference and loads, serves and exports as one.

One change from the paper: LayerNorm's gain and bias start at zero, so the projected prompt starts equal to its
initialisation (label words, vocabulary...). A unit gain adds vectors of norm sqrt(d) to embeddings whose rows
have a far smaller norm: the init would be lost in the first forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..declare import OptionGroup, option
from ..errors import ConfigError
from ..prompts import InputVectors, SoftPrompt


@dataclass(frozen=True)
class ResidualOptions:
    """--method residual: the prompt trains through a residual bottleneck MLP, folded into plain vectors at save."""

    bottleneck: int = option(400, "--method residual: width of the MLP's bottleneck (trained only; the saved prompt "
                                  "holds no MLP).", "residual", flag="residual_bottleneck")
    dropout: float = option(0.1, "--method residual: dropout on the MLP's output while training.", "residual",
                            flag="residual_dropout")


OPTIONS = OptionGroup("residual", "Method: residual prompt tuning (--method residual)", ResidualOptions)


class ResidualPrompt(InputVectors, nn.Module):
    """A prompt trained through a residual bottleneck MLP, folded into a plain prompt when saved.

    Examples:
        >>> prompt = ResidualPrompt(torch.zeros(4, 8), bottleneck=3)
        >>> prompt().shape, tuple(prompt.folded().embeddings.shape)
        (torch.Size([4, 8]), (4, 8))
    """

    method = "prompt"

    def __init__(self, embeddings: torch.Tensor, bottleneck: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embeddings.dim() != 2:
            raise ConfigError(f"prompt embeddings must be [num_virtual_tokens, hidden_size], got {tuple(embeddings.shape)}")
        if bottleneck < 1 or not 0 <= dropout < 1:
            raise ConfigError(f"--residual-bottleneck must be >= 1 and --residual-dropout in [0, 1), got {bottleneck} "
                              f"and {dropout}")
        hidden = embeddings.shape[1]
        self.embeddings = nn.Parameter(embeddings.detach().to(torch.float32).clone())
        self.down = nn.Linear(hidden, bottleneck, device=embeddings.device)
        self.up = nn.Linear(bottleneck, hidden, device=embeddings.device)
        self.norm = nn.LayerNorm(hidden, device=embeddings.device)
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        self.dropout = dropout


    def _project(self, training: bool) -> torch.Tensor:
        branch = self.norm(self.up(F.relu(self.down(self.embeddings))))            # (n, d)
        return self.embeddings + F.dropout(branch, self.dropout, training=training)

    def forward(self) -> torch.Tensor:
        return self._project(self.training)  # (n, d)

    def folded(self) -> SoftPrompt:
        """The projected vectors (no dropout) as a plain prompt, without the MLP's parameters."""
        with torch.no_grad():
            return SoftPrompt(self._project(training=False))

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return self.folded().to_tensors()


def start(begin) -> ResidualPrompt:
    """The initial (or --init-from) vectors under a fresh MLP, seeded by --seed."""
    config = begin.config
    vectors = (begin.tensors["prompt_embeddings"] if begin.tensors is not None
               else begin.vectors.to(begin.backbone.device))
    torch.manual_seed(config.seed)  # the MLP's init
    return ResidualPrompt(vectors, config.residual.bottleneck, config.residual.dropout)


def parameters(config, shape, count: int) -> int:
    """The vectors and the MLP, which trains too (and is folded away at save)."""
    width = config.residual.bottleneck
    return count * shape.hidden + 2 * shape.hidden * width + width + 3 * shape.hidden


def card(config) -> str:
    return (f", trained through a residual MLP (bottleneck {config.residual.bottleneck}, dropout "
            f"{config.residual.dropout}), saved folded into plain vectors")
