"""Dynamic and continuous batching: rows of concurrent requests, also for different prompts, share backbone passes.

Requests enqueue rows (one `Request` each) from the event loop; one worker thread owns the backbone. It waits
until the oldest row has waited `wait_ms` (or a batch is full), takes up to `max_rows` rows -- of any prompts,
or with `mix_prompts=False` only rows of the oldest row's prompt (the one-prompt-at-a-time baseline) -- and runs
their prefill together (`start_requests`): classification rows are answered from it, generation rows join the
rows already decoding. Between two decode steps the worker admits what has arrived meanwhile (without waiting
for company), so a new request does not wait for the longest generation in flight, and a row that finishes
leaves at once (continuous batching); rows decoding count against `max_rows`. Each result goes back to its
request's event loop. A row holds the model object it was resolved to, so replacing or deleting a prompt never
fails a request already queued.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from ..cpu import keep_freed_memory, release_free_memory
from ..inference.batch import Decoder, Generation, Request
from ..inference.engine import length_groups, run_requests, start_requests
from ..protocols import Backbone
from .metrics import Metrics

log = logging.getLogger("softprompt.serve")


@dataclass
class Work:
    request: Request
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    stream: asyncio.Queue | None = None   # receives a None when the row is done (after its text pieces)
    index: int = 0                        # the choice index a streamed piece belongs to
    tokens: int = 0                       # the row's length, for grouping rows of similar length
    enqueued: float = field(default_factory=time.monotonic)


def resolve_future(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# After this long without work the worker hands freed memory back to the kernel. Not between batches: a server
# under load reuses the freed activations of the last batch (`cpu.keep_freed_memory`), and returning them would
# make the next batch page-fault its way through fresh memory.
IDLE_RELEASE_SECONDS = 2.0


class DynamicBatcher:
    def __init__(self, backbone: Backbone, metrics: Metrics, *, max_rows: int = 32, wait_ms: float = 10.0,
                 mix_prompts: bool = True, pad_ratio: float = 1.5, decode_threads: int | None = None) -> None:
        self.backbone = backbone
        # A decode step (one token for a few rows) gains little from a second thread, while the event loop, which
        # streams every token to its client, needs a core to itself: leave it one (docs/results.md, "Generation
        # at 8 streams": 55 vs 49 tokens/s on 2 cores). Prefills keep every thread.
        self.decode_threads = decode_threads or max(1, torch.get_num_threads() - 1)
        self.metrics = metrics
        self.max_rows = max_rows
        self.wait = wait_ms / 1000.0
        self.mix_prompts = mix_prompts
        self.pad_ratio = pad_ratio
        self._pending: deque[Work] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._ran_since_release = False
        self._decoder = Decoder(backbone)
        self._decoding: dict[int, Work] = {}  # id(request) -> work, for the rows in `_decoder`

    def start(self) -> None:
        keep_freed_memory()
        if self._thread is None:
            self._stopped = False
            self._thread = threading.Thread(target=self._loop, name="softprompt-batcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def submit(self, works: list[Work]) -> None:
        with self._cond:
            self._pending.extend(works)
            self.metrics.queue_rows.set(len(self._pending))
            self._cond.notify_all()

    # ---- worker --------------------------------------------------------------------------------------------
    def _take(self) -> list[Work] | None:
        """The next rows to prefill: None once stopped, [] when rows are decoding and nothing fits or waits."""
        decoding = len(self._decoding)
        with self._cond:
            while not self._pending and not self._stopped and not decoding:
                if not self._cond.wait(IDLE_RELEASE_SECONDS) and self._ran_since_release:
                    release_free_memory()  # idle: the resident memory of the last peak goes back
                    self._ran_since_release = False
            if self._stopped:
                return None
            self._drop_abandoned()
            room = self.max_rows - decoding
            if not self._pending or room <= 0:
                return []
            while not decoding and len(self._pending) < room and not self._stopped:  # let a batch gather
                left = self._pending[0].enqueued + self.wait - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self.mix_prompts:
                batch = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            else:
                model = self._pending[0].request.model
                batch = [w for w in self._pending if w.request.model is model][:room]
                chosen = {id(w) for w in batch}
                self._pending = deque(w for w in self._pending if id(w) not in chosen)
            self.metrics.queue_rows.set(len(self._pending))
            return batch

    def _drop_abandoned(self) -> None:
        """Rows whose client went away leave the queue without running (their futures are already cancelled)."""
        kept = deque(w for w in self._pending if not w.request.abandoned)
        if len(kept) != len(self._pending):
            self.metrics.abandoned_rows.inc(len(self._pending) - len(kept))
            self._pending = kept
            self.metrics.queue_rows.set(len(kept))

    def abandon(self, works: list[Work]) -> None:
        """The client of these rows has gone: queued rows are dropped, a generating row stops at its next token."""
        running = 0
        for work in works:
            if not work.future.done():
                running += 1
                work.request.abandoned = True
                work.future.cancel()
        with self._cond:
            queued = sum(1 for w in self._pending if w.request.abandoned)
            self._drop_abandoned()
            self._cond.notify_all()
        if running > queued:  # the rest were in a batch already: count them here
            self.metrics.abandoned_rows.inc(running - queued)

    def _loop(self) -> None:
        while (taken := self._take()) is not None:
            for group in length_groups([w.tokens for w in taken], self.pad_ratio):
                self._run([taken[i] for i in group])
            if self._decoding:
                self._step()
            self._ran_since_release = True
        while self._decoding:  # stopping: the rows in flight finish
            self._step()

    def _run(self, batch: list[Work]) -> None:
        """Prefill `batch`: answer its finished rows, let its generation rows join the decoder."""
        started = time.perf_counter()
        try:
            results, self._decoder = start_requests(self.backbone, [w.request for w in batch], self._decoder)
            outcomes = [(result, None) for result in results]
        except Exception:  # noqa: BLE001 -- isolate the failing rows: run each alone
            log.exception("a batch of %d rows failed; running its rows one by one", len(batch))
            outcomes = [self._alone(w) for w in batch]
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_rows.observe(len(batch))
        self.metrics.batch_prompts.observe(len({id(w.request.model) for w in batch}))
        for work, (result, error) in zip(batch, outcomes):
            if result is None and error is None:
                self._decoding[id(work.request)] = work
            else:
                self._finish(work, result, error)

    def _step(self) -> None:
        """One decode step of every generating row; the rows that finished get their results."""
        threads = torch.get_num_threads()
        torch.set_num_threads(self.decode_threads)
        try:
            finished = [(state.request, state.result(), None) for state in self._decoder.step()]
        except Exception as exc:  # noqa: BLE001 -- the rows in flight get the error; the server goes on
            log.exception("decoding %d rows failed", len(self._decoding))
            finished = [(work.request, None, exc) for work in self._decoding.values()]
            self._decoder = Decoder(self.backbone)
        finally:
            torch.set_num_threads(threads)
        for request, result, error in finished:
            self._finish(self._decoding.pop(id(request)), result, error)

    def _finish(self, work: Work, result: Any, error: BaseException | None) -> None:
        self.metrics.generated_tokens.inc(result.completion_tokens if isinstance(result, Generation) else 0)
        if error is None and not work.request.abandoned:
            self.metrics.finished_rows.inc()
        work.loop.call_soon_threadsafe(resolve_future, work.future, result, error)
        if work.stream is not None:
            work.loop.call_soon_threadsafe(work.stream.put_nowait, (work.index, None))

    def _alone(self, work: Work) -> tuple[Any, BaseException | None]:
        try:
            return run_requests(self.backbone, [work.request])[0], None
        except Exception as exc:  # noqa: BLE001 -- handed to the request that caused it
            return None, exc
