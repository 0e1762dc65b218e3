"""Run-state checkpoints: everything a training run needs to continue exactly where it stopped.

`RUN_DIR/checkpoint.pt` holds the trainable parameters, the optimiser, the scheduler, the divergence guard, the
RNG states, the data stream's position and the loop's bookkeeping (history, best state, counters), plus the
run's config. It is written to a hidden temp file in the run folder, flushed to disk, then renamed over the
old one: a process killed at any moment leaves either the previous checkpoint or the new one, never half of
one. `softprompt train --resume RUN_DIR` (`resume()`) continues to the same final prompt an uninterrupted run
reaches.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import ConfigError
from ..formats import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
VERSION = 1


class BatchStream(Iterator[list[int]]):
    """Endless seeded shuffles of the training rows, cut into batches (a short last batch is kept).

    With `bucket`, each run of 50 batches is sorted by length before cutting, and the batches are shuffled
    again: rows of similar length share a batch, so left padding (and wasted compute) stays small.
    The position is a state (`state_dict`): the generator's state when the current pass began and how many
    of its batches were taken, so a resumed run draws the very same batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucket: bool) -> None:
        self.lengths, self.batch_size, self.bucket = lengths, batch_size, bucket
        self.generator = torch.Generator().manual_seed(seed)
        self.pass_start: torch.Tensor | None = None
        self.batches: list[list[int]] = []
        self.position = 0

    def _new_pass(self) -> None:
        self.pass_start = self.generator.get_state()
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        size = self.batch_size
        if not self.bucket:
            self.batches = [order[s:s + size] for s in range(0, len(order), size)]
        else:
            window = size * 50
            batches = []
            for start in range(0, len(order), window):
                chunk = sorted(order[start:start + window], key=lambda i: self.lengths[i])
                batches += [chunk[s:s + size] for s in range(0, len(chunk), size)]
            self.batches = [batches[i] for i in torch.randperm(len(batches), generator=self.generator).tolist()]
        self.position = 0

    def __next__(self) -> list[int]:
        if self.position >= len(self.batches):
            self._new_pass()
        self.position += 1
        return self.batches[self.position - 1]

    def state_dict(self) -> dict[str, Any]:
        return {"pass_start": self.pass_start, "position": self.position, "rows": len(self.lengths)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["rows"] != len(self.lengths):
            raise ConfigError(f"the checkpoint was taken with {state['rows']} training rows, the data now has "
                              f"{len(self.lengths)}: resume with the same data")
        if state["pass_start"] is not None:
            self.generator.set_state(state["pass_start"])
            self._new_pass()
            self.position = state["position"]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write `state` to RUN_DIR/checkpoint.pt atomically (temp file, fsync, rename)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save({"version": VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())

    return atomic_write(Path(run_dir) / CHECKPOINT_NAME, write)


def clear_interrupted_writes(run_dir: str | Path) -> int:
    """Remove temp files a killed write left behind (a checkpoint, the prompt, the log's plot: the files they
    would have replaced are intact); returns how many. Only for a run no process is writing any more: `resume`
    calls it."""
    stale = [path for path in Path(run_dir).glob(".*.tmp") if path.is_file()]  # atomic_write's `.NAME.XXXX.tmp`
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """The run state in RUN_DIR (clear errors for a missing folder, no checkpoint, or an unreadable file)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such run folder")
    path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        raise ConfigError(f"--resume {run_dir}: no {CHECKPOINT_NAME} in it (checkpoints are written every "
                          f"--checkpoint-every steps; a run stopped before the first one has nothing to resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ConfigError(f"--resume {path}: not a readable checkpoint ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise ConfigError(f"--resume {path}: not a softprompt checkpoint of version {VERSION}")
    return state
