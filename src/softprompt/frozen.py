"""What every backbone kind shares: a frozen wrapped model and the weight fingerprint."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

# Set on a model whose weights were quantised at load (`--load-in int8`): the fingerprint of its weights as they
# were in the checkpoint, so that a prompt trained on the full-precision backbone loads on the quantised one and
# the other way round (the fingerprint names the checkpoint, not how it is held in memory).
CHECKPOINT_FINGERPRINT = "_softprompt_checkpoint_fingerprint"


class FrozenBackbone(nn.Module):
    """What every backbone kind shares: the wrapped model never trains (no parameter requires a gradient and it
    stays in eval mode whatever a parent module asks), its fingerprint is computed once, and
    `autocast_dtype` (mixed precision over fp32 weights, for weight-training baselines) starts unset."""

    # Whether every layer caches keys and values: a causal LM with state-space or recurrent layers says False, and
    # its rows run whole (`scoring.Recomputed`).
    keeps_keys_values = True

    def __init__(self, model: nn.Module, name: str, tokenizer: Any = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.model.eval()
        self._fingerprint: str | None = None
        self.autocast_dtype: torch.dtype | None = None

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: dropout stays off

    @property
    def device(self) -> torch.device:
        """Where the weights are (a text model's input embedding; other kinds override)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def shape_metadata(self) -> dict[str, int | None]:
        """Layer and head counts for a prompt file's metadata (None where the architecture has no such field)."""
        config = self.model.config
        return {"num_layers": getattr(config, "num_hidden_layers", None),  # configs name these differently
                "num_attention_heads": getattr(config, "num_attention_heads", None)}

    def tokenizer_metadata(self) -> dict[str, Any] | None:
        """The tokenizer a prompt file was trained with (None for a kind that reads no text)."""
        if self.tokenizer is None:
            return None
        return {"name": getattr(self.tokenizer, "name_or_path", "") or self.name, "vocab_size": len(self.tokenizer)}

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = getattr(self.model, CHECKPOINT_FINGERPRINT, None) or weights_fingerprint(self.model)
        return self._fingerprint


def weights_fingerprint(module: nn.Module, *, full: bool = False, samples_per_tensor: int = 2048) -> str:
    """A hex digest that identifies a model's weights.

    The default samples a strided subset of every parameter and hashes it in bfloat16, so the same checkpoint
    loaded in fp32 or bf16, on any device, has one fingerprint, and computing it takes milliseconds.
    `full=True` hashes every byte of every parameter in its own dtype: use it to prove that weights did not
    change at all (e.g. before and after training).
    """
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
        tensor = param.detach()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        flat = tensor.reshape(-1)
        if full:
            digest.update(str(tensor.dtype).encode())
            digest.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
            continue
        step = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::step][:samples_per_tensor].to(device="cpu", dtype=torch.bfloat16)
        digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:32]
