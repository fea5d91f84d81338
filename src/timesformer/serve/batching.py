"""One inference worker for many requests: clips from concurrent requests are coalesced into batches.

A request submits its clips ``v t c S S`` (and their frame masks ``v t``) and gets a ``concurrent.futures.Future``
of their logits ``v classes``. The worker thread takes the oldest request, then keeps adding requests until the
batch holds ``max_batch`` clips or ``max_wait_ms`` have passed since it began waiting, runs the model once, and
splits the logits back. The queue is bounded: a full queue refuses the request at once (``QueueFull``), so the
server can answer 503 instead of growing without limit. A request may carry a deadline: one still queued when it
passes is skipped (``DeadlineExceeded``), as is one whose future was cancelled, so the model never runs for a caller
that has given up. Decoding happens in the callers, never in this thread.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch


class QueueFull(Exception):
    """The batcher's queue holds ``queue_size`` requests already."""


class Stopped(Exception):
    """The batcher is shutting down and takes no new requests."""


class DeadlineExceeded(Exception):
    """The request's deadline passed while it waited: the model did not run for it."""


@dataclass
class _Request:
    clips: torch.Tensor  # v t c S S
    masks: torch.Tensor  # v t bool
    deadline: float | None = None  # time.monotonic() seconds
    future: Future = field(default_factory=Future)


class Batcher:
    """Coalesces requests for ``model(video, mask) -> logits`` on one thread.

    Args:
        model: called as ``model(clips, masks)`` with ``clips: b t c S S`` and ``masks: b t`` bool, on this thread.
        max_batch: the most clips per model call (a request with more clips than this runs alone).
        max_wait_ms: how long the worker waits for more requests once it holds one.
        queue_size: requests waiting at most; more are refused with ``QueueFull``.
        on_batch: called with the number of clips of every batch run (metrics).
    """

    def __init__(self, model, *, max_batch: int = 8, max_wait_ms: float = 20.0, queue_size: int = 64, on_batch=None):
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError(
                f"max_batch and queue_size must be >= 1 and max_wait_ms >= 0; got {max_batch}, "
                f"{queue_size}, {max_wait_ms}"
            )
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1000
        self.on_batch, self.queue_size = on_batch, queue_size
        self._queue: queue.Queue[_Request | None] = queue.Queue()  # bounded by the count below, under the lock
        self._lock = threading.Lock()
        self._waiting, self._accepting = 0, True
        self._thread = threading.Thread(target=self._run, name="timesformer-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting (not counting the batch being run)."""
        return self._waiting

    def submit(self, clips: torch.Tensor, masks: torch.Tensor, deadline: float | None = None) -> Future:
        """Queue ``clips: v t c S S`` with ``masks: v t``; the future resolves to logits ``v classes`` (CPU, fp32), or
        fails with ``DeadlineExceeded`` when ``deadline`` (``time.monotonic()`` seconds) passes before its batch runs.
        """
        request = _Request(clips, masks, deadline)
        with self._lock:  # the check and the put together: nothing slips in after close()
            if not self._accepting:
                raise Stopped("the server is shutting down")
            if self._waiting >= self.queue_size:
                raise QueueFull(f"{self.queue_size} requests are waiting")
            self._waiting += 1
            self._queue.put_nowait(request)
        return request.future

    def close(self, timeout: float | None = None):
        """Stop taking requests, finish every queued one, then stop the worker."""
        with self._lock:
            self._accepting = False
            self._queue.put_nowait(None)  # after everything queued: the worker drains, then meets this and stops
        self._thread.join(timeout)

    def _get(self, timeout: float | None = None) -> _Request | None:
        item = self._queue.get(timeout=timeout)
        if item is not None:
            with self._lock:
                self._waiting -= 1
        return item

    def _run(self):
        carry, stopping = None, False  # carry: a request that did not fit the last batch
        while True:
            first = carry if carry is not None else (None if stopping else self._get())
            carry = None
            if first is None:
                return
            batch, clips = [first], len(first.clips)
            deadline = time.monotonic() + self.max_wait
            while clips < self.max_batch and not stopping:
                try:
                    nxt = self._get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if nxt is None:  # close(): everything queued before it is in hand
                    stopping = True
                elif clips + len(nxt.clips) > self.max_batch:
                    carry = nxt
                    break
                else:
                    batch.append(nxt)
                    clips += len(nxt.clips)
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Request]):
        now, live = time.monotonic(), []
        for r in batch:
            if not r.future.set_running_or_notify_cancel():  # cancelled: its caller gave up
                continue
            if r.deadline is not None and now > r.deadline:
                r.future.set_exception(DeadlineExceeded(f"its deadline passed {now - r.deadline:.3f} s ago"))
                continue
            live.append(r)
        if not live:
            return
        try:
            clips = torch.cat([r.clips for r in live])
            masks = torch.cat([r.masks for r in live])
            with torch.inference_mode():
                logits = self.model(clips, masks).float().cpu()
            if self.on_batch is not None:
                self.on_batch(len(clips))
        except BaseException as err:  # the requests learn why; the worker keeps serving
            for r in live:
                r.future.set_exception(err)
            return
        start = 0
        for r in live:
            r.future.set_result(logits[start : start + len(r.clips)])
            start += len(r.clips)
