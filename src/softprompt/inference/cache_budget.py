"""A memory budget for prompts' cached keys/values: the least recently used caches go first.

A prefix prompt's keys/values are computed once and reused by every row of that prompt (`PromptedModel.
prompt_cache`). On a server holding many prompts these caches are most of the memory a prompt costs (on
smollm2-135m a 20-token prompt is 46 KB of vectors but ~0.5 MB of bf16 keys/values: 21 columns x 23 KB), so a
bank can cap them: when the caches' bytes pass the budget, the caches of the prompts used longest ago are dropped
and recomputed (one batch-1 pass over the prompt's columns) the next time a row needs them. The prompts
themselves always stay.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, Sequence

import torch


def cache_bytes(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for layer in layers for t in layer)


class PromptCacheBudget:
    """Least-recently-used eviction of prompt caches above `max_bytes` (None: no limit, only accounting).

    A model reports each use of its cache with `used(model, layers)`; the budget may then drop other models'
    caches through their `drop_prompt_cache()`. The cache in use is never dropped, so one prompt larger than the
    budget still runs (and is dropped as soon as another prompt is used).
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("a cache budget cannot be negative")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, tuple[weakref.ref, int]] = OrderedDict()  # id(model) -> (model, bytes)
        self._bytes = 0
        self.evictions = 0
        self._lock = threading.RLock()  # a collected model's callback may run inside a locked block (gc)

    @property
    def bytes(self) -> int:
        """Bytes of the caches held now."""
        return self._bytes

    def has_room(self) -> bool:
        """Whether the caches held now are under the budget."""
        return self.max_bytes is None or self._bytes < self.max_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def used(self, model: Any, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """`model`'s cache (`layers`) was just used: mark it most recent, then evict down to the budget."""
        key = id(model)
        dropped = []
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None and entry[0]() is model:
                self._entries[key] = entry
            else:
                size = cache_bytes(layers)
                if entry is not None:  # the id of a model since collected, reused
                    self._bytes -= entry[1]
                self._entries[key] = (weakref.ref(model, lambda _, key=key: self._collected(key)), size)
                self._bytes += size
            while self.max_bytes is not None and self._bytes > self.max_bytes and len(self._entries) > 1:
                _, (ref, size) = self._entries.popitem(last=False)
                self._bytes -= size
                self.evictions += 1
                if (victim := ref()) is not None:
                    dropped.append(victim)
        for victim in dropped:  # outside the lock: a model's own state, not the budget's
            victim.drop_prompt_cache()

    def forget(self, model: Any) -> None:
        """`model` left the bank (or its cache was replaced): stop counting its cache."""
        with self._lock:
            entry = self._entries.pop(id(model), None)
            if entry is not None:
                self._bytes -= entry[1]

    def _collected(self, key: int) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0]() is None:
                del self._entries[key]
                self._bytes -= entry[1]
