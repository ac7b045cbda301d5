"""Dynamic batching: concurrent requests -> backbone batches, in one inference worker thread per model.

The event loop only *submits*: a request's texts are tokenized once by the caller (their token counts feed the
budget, ``usage`` and the limits) and handed over as a :class:`Job`; :meth:`Batcher.submit` returns an asyncio future
at once and the loop never runs torch. The worker thread:

1. waits for work; once some is pending it waits at most ``max_wait_ms`` (counted from the oldest pending request)
   for more, unless a full batch is already pending;
2. builds a batch around the longest unscheduled text of the *oldest* pending request (so requests are served in
   arrival order and none starves): the other texts of the oldest ``max_batch_requests`` pending requests that are
   not longer, sorted by token length (longest first), and of the prefixes that fit the token budget, ``rows x
   longest <= max_batch_tokens`` (padded tokens: a batch is padded to its longest text), the one with the lowest
   cost per real token, ``(batch_overhead_tokens + rows x longest) / real tokens``. A large per-batch overhead (a
   GPU) fills the budget; a small one (a CPU, where a forward costs about its padded tokens) keeps a batch to texts
   of about the same length, so little compute goes to padding. A request may be split over several batches and a
   batch mixes rows of several requests; every row goes back to its own request's slot;
3. runs ``embed_fn(features) -> Z [rows, dim]`` (``Encoder.embed_features``: the same code as ``Encoder.encode``),
   scatters the rows back, and once all of a request's rows are done runs its ``finish(Z)`` (normalize, a head,
   cosines, base64: still off the loop) and resolves its future through ``loop.call_soon_threadsafe``.

Backpressure: at most ``max_queue`` requests are accepted and unfinished at a time; one more raises
:class:`QueueFull` (the server answers 429) instead of growing memory. :meth:`Batcher.close` stops accepting
(:class:`ShuttingDown`), lets the worker finish everything accepted, then joins it.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

log = logging.getLogger("glotpool.serve")


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` unfinished requests: retry later (HTTP 429)."""


class ShuttingDown(Exception):
    """The batcher no longer accepts requests (the server is draining)."""


@dataclass
class BatchStats:
    model: str
    rows: int             # texts in the batch
    requests: int         # distinct requests they came from
    tokens: int           # real tokens
    padded_tokens: int    # rows x longest: what the backbone computes
    seconds: float        # embed_fn wall time


@dataclass(eq=False)
class Job:
    features: list[dict]                 # per text: {"input_ids": [...], "attention_mask": [...], ...}
    lengths: list[int]                   # token count per text
    finish: Callable[[torch.Tensor], Any] | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    seq: int = 0
    arrived: float = field(default_factory=time.monotonic)
    todo: list[int] = field(default_factory=list)   # rows not yet scheduled
    left: int = 0                                    # rows not yet computed
    out: torch.Tensor | None = None

    def __post_init__(self):
        self.todo = list(range(len(self.features)))
        self.left = len(self.features)

    def abandoned(self) -> bool:
        return self.future.done()  # cancelled by the caller (client went away) or already failed


def _resolve(fut: asyncio.Future, value=None, error: BaseException | None = None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


class Batcher:
    """One model's queue and inference worker. ``embed_fn(list of feature dicts) -> Tensor [rows, dim]``."""

    def __init__(self, name: str, embed_fn: Callable[[list[dict]], torch.Tensor], max_batch_tokens: int = 4096,
                 max_batch_requests: int = 128, max_wait_ms: float = 2.0, max_queue: int = 512,
                 batch_overhead_tokens: int = 256,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 on_queue: Callable[[str, int, int], None] | None = None):
        if max_batch_tokens < 1 or max_batch_requests < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_tokens, max_batch_requests and max_queue must be >= 1 and max_wait_ms >= 0")
        self.name, self.embed_fn = name, embed_fn
        self.max_batch_tokens, self.max_batch_requests = int(max_batch_tokens), int(max_batch_requests)
        self.max_wait, self.max_queue = max_wait_ms / 1000.0, int(max_queue)
        self.batch_overhead_tokens = max(0, int(batch_overhead_tokens))
        self.on_batch, self.on_queue = on_batch, on_queue
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()   # jobs with rows not yet scheduled, in arrival order
        self._unfinished = 0                   # accepted, not yet resolved
        self._seq = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"glotpool-infer-{name}", daemon=True)

    # --- event-loop side -----------------------------------------------------------------------------------------
    def start(self) -> "Batcher":
        self._thread.start()
        return self

    @property
    def unfinished(self) -> int:
        return self._unfinished

    def full(self) -> bool:
        return self._unfinished >= self.max_queue

    def submit(self, features: list[dict], lengths: list[int], finish=None) -> asyncio.Future:
        """Queue one request's tokenized texts -> future of ``finish(Z)`` (or ``Z [n, dim]`` without finish).

        Raises :class:`QueueFull` or :class:`ShuttingDown` at once (nothing is queued then).
        """
        if len(features) != len(lengths) or not features:
            raise ValueError("submit needs one length per feature row and at least one row")
        loop = asyncio.get_running_loop()
        job = Job(features, lengths, finish, loop, loop.create_future())
        with self._cond:
            if self._closed:
                raise ShuttingDown(f"model {self.name!r} is shutting down")
            if self._unfinished >= self.max_queue:
                raise QueueFull(f"model {self.name!r} has {self._unfinished} requests in flight (--max-queue "
                                f"{self.max_queue})")
            self._seq += 1
            job.seq = self._seq
            self._pending.append(job)
            self._unfinished += 1
            self._cond.notify()
            self._report_queue()
        return job.future

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting, finish every accepted request, join the worker. -> True when it ended in time."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- worker side ---------------------------------------------------------------------------------------------
    def _report_queue(self) -> None:  # under the lock
        if self.on_queue is not None:
            self.on_queue(self.name, len(self._pending), self._unfinished)

    def _drop_abandoned(self) -> None:  # under the lock
        for job in [j for j in self._pending if j.abandoned()]:
            self._pending.remove(job)
            job.todo = []
            if job.left:  # rows already in a running batch finish there and resolve nothing
                job.left = 0
                self._unfinished -= 1

    def _ready(self) -> bool:  # under the lock: stop waiting for more requests?
        if self._closed or len(self._pending) >= self.max_batch_requests:
            return True
        if time.monotonic() >= self._pending[0].arrived + self.max_wait:
            return True
        longest, rows = 0, 0
        for job in self._pending:
            for r in job.todo:
                longest, rows = max(longest, job.lengths[r]), rows + 1
                if rows * longest >= self.max_batch_tokens:
                    return True
        return False

    def _take_batch(self) -> list[tuple[Job, int]]:  # under the lock
        head = self._pending[0]  # the oldest request is always served: no request waits behind newer ones
        anchor = max(head.todo, key=lambda r: (head.lengths[r], -r))
        longest = max(1, head.lengths[anchor])
        window = list(self._pending)[:self.max_batch_requests]
        rows = sorted(((j.lengths[r], j.seq, r, j) for j in window for r in j.todo
                       if j.lengths[r] <= longest and not (j is head and r == anchor)),
                      key=lambda t: (-t[0], t[1], t[2]))
        rows.insert(0, (head.lengths[anchor], head.seq, anchor, head))
        n_max = max(1, min(len(rows), self.max_batch_tokens // longest))
        # of the prefixes, the one with the lowest cost per real token: (overhead + rows x longest) / real tokens
        n, best, real = 1, float("inf"), 0
        for k in range(1, n_max + 1):
            real += rows[k - 1][0]
            cost = (self.batch_overhead_tokens + k * longest) / max(1, real)
            if cost <= best:
                n, best = k, cost
        batch = [(j, r) for _, _, r, j in rows[:n]]
        taken: dict[Job, set] = {}
        for j, r in batch:
            taken.setdefault(j, set()).add(r)
        for j, rs in taken.items():
            j.todo = [r for r in j.todo if r not in rs]
            if not j.todo:
                self._pending.remove(j)
        self._report_queue()
        return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    self._drop_abandoned()
                    if self._pending:
                        if self._ready():
                            break
                        self._cond.wait(max(0.0, self._pending[0].arrived + self.max_wait - time.monotonic()))
                    elif self._closed:
                        self._report_queue()
                        return
                    else:
                        self._cond.wait()
                batch = self._take_batch()
            self._execute(batch)

    def _execute(self, batch: list[tuple[Job, int]]) -> None:
        jobs = list(dict.fromkeys(j for j, _ in batch))
        lengths = [j.lengths[r] for j, r in batch]
        t0 = time.perf_counter()
        try:
            z = self.embed_fn([j.features[r] for j, r in batch])
        except Exception as e:  # noqa: BLE001  (fail these requests, keep serving)
            log.exception("inference failed for model %s (batch of %d texts)", self.name, len(batch))
            with self._cond:
                for j in jobs:
                    if j in self._pending:
                        self._pending.remove(j)
                    j.todo = []
                    if j.left:
                        j.left = 0
                        self._unfinished -= 1
                        j.loop.call_soon_threadsafe(_resolve, j.future, None, e)
                self._report_queue()
            return
        seconds = time.perf_counter() - t0
        if self.on_batch is not None:
            self.on_batch(BatchStats(self.name, len(batch), len(jobs), sum(lengths), len(batch) * max(lengths),
                                     seconds))
        done = []
        for i, (j, r) in enumerate(batch):
            if j.left == 0:  # abandoned meanwhile
                continue
            if j.out is None:
                j.out = torch.empty(len(j.features), z.shape[1], dtype=z.dtype)
            j.out[r] = z[i]
            j.left -= 1
            if j.left == 0:
                done.append(j)
        results = []
        for j in done:
            try:
                results.append((j, j.finish(j.out) if j.finish is not None else j.out, None))
            except Exception as e:  # noqa: BLE001
                log.exception("post-processing failed for model %s", self.name)
                results.append((j, None, e))
        if done:
            with self._cond:  # count them out before the callers resume
                self._unfinished -= len(done)
                self._report_queue()
        for j, value, error in results:
            j.loop.call_soon_threadsafe(_resolve, j.future, value, error)


__all__ = ["BatchStats", "Batcher", "Job", "QueueFull", "ShuttingDown"]
