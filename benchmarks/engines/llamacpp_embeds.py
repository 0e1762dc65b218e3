"""llama.cpp fed input vectors, for benchmarks/engines/engines.py: llama-cpp-python's C API with each row's embeddings as
`llama_batch.embd` (a soft prompt needs vectors, not token ids). Installed into .engines/ (see engines.py)."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

import numpy as np


class LlamaCpp:
    """llama.cpp through llama-cpp-python's C API, fed input vectors: each row's (T_i, d) fp32 embeddings go in as
    `llama_batch.embd`, one sequence per row (no padding), logits only at each row's last position."""

    def __init__(self, gguf: Path, threads: int, max_rows: int, max_row_tokens: int) -> None:
        import llama_cpp

        self.lib = lib = llama_cpp
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its log callback prints only errors then
        lib.llama_backend_init()
        model_params = lib.llama_model_default_params()
        # Off: the AMX buffer type repacks the Q4_1 weights and llama_decode then segfaults on this CPU (any thread
        # count; llama.cpp issue 20824; PR 16315: AMX gave wrong results for Q4_0/Q4_1). Plain CPU kernels instead.
        model_params.use_extra_bufts = False
        self.model = lib.llama_model_load_from_file(str(gguf).encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        params = lib.llama_context_default_params()
        params.n_ctx = params.n_batch = max_rows * max_row_tokens
        params.n_seq_max = max_rows
        params.n_threads = params.n_threads_batch = threads
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.vocab_size = lib.llama_vocab_n_tokens(self.vocab)
        self.width = lib.llama_model_n_embd(self.model)
        self.capacity = params.n_ctx
        self.batch = lib.llama_batch_init(self.capacity, self.width, 1)   # input vectors
        self.token = lib.llama_batch_init(1, 0, 1)                        # one token id (generation)

    def _decode_vectors(self, rows: list[np.ndarray]) -> list[int]:
        """Clear the cache and run every row as its own sequence; returns each row's last index in the batch."""
        flat = np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)              # (sum T_i, d)
        if flat.shape[0] > self.capacity or flat.shape[1] != self.width:
            raise ValueError(f"{flat.shape} input vectors; the context holds ({self.capacity}, {self.width})")
        ctypes.memmove(self.batch.embd, flat.ctypes.data, flat.nbytes)
        count = flat.shape[0]
        positions = np.ctypeslib.as_array(self.batch.pos, shape=(count,))
        np.ctypeslib.as_array(self.batch.n_seq_id, shape=(count,))[:] = 1
        wanted = np.ctypeslib.as_array(self.batch.logits, shape=(count,))
        wanted[:] = 0
        lasts, start = [], 0
        for sequence, row in enumerate(rows):
            positions[start:start + len(row)] = np.arange(len(row))
            for index in range(start, start + len(row)):
                self.batch.seq_id[index][0] = sequence
            start += len(row)
            wanted[start - 1] = 1
            lasts.append(start - 1)
        self.batch.n_tokens = count
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        self._decode(self.batch)
        return lasts

    def _decode(self, batch: Any) -> None:
        status = self.lib.llama_decode(self.ctx, batch)
        if status:
            raise RuntimeError(f"llama_decode returned {status}")

    def _logits(self, index: int) -> np.ndarray:
        return np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, index), shape=(self.vocab_size,)).copy()

    def last_logits(self, rows: list[np.ndarray]) -> np.ndarray:
        """(B, V) next-token logits after each row."""
        return np.stack([self._logits(i) for i in self._decode_vectors(rows)])

    def generate(self, vectors: np.ndarray, max_new_tokens: int) -> list[int]:
        """Greedy continuation of one row's input vectors, up to an end-of-generation token."""
        logits, length, tokens = self._logits(self._decode_vectors([vectors])[0]), len(vectors), []
        while len(tokens) < max_new_tokens:
            token = int(logits.argmax())
            if self.lib.llama_vocab_is_eog(self.vocab, token):
                break
            tokens.append(token)
            batch = self.token
            batch.n_tokens, batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.logits[0] = 1, token, length, 1, 1
            batch.seq_id[0][0] = 0
            self._decode(batch)
            length += 1
            logits = self._logits(0)
        return tokens

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_batch_free(self.token)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)
