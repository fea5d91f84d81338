"""What every route shares, held in one object on ``app.state.server``: the predictor, the server's settings, the
batcher, the worker threads, the metrics. Routes take it as the ``Server`` dependency.

Work a request hands to another thread (a decode, a model call, an explanation) goes through ``ServerState.run``,
``logits`` or ``explain``, which take the request: its deadline goes with the work, and the work is listed in the
request's :class:`Jobs`. A request cancelled at its deadline stops *waiting* at once, but a thread already running
for it runs on (a decode to the deadline it was given, a model call to its end); the guard holds the request's
upload slot until its jobs are done, so a client cannot start new work while the old still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

import torch
from fastapi import Depends, Request

from ..data import DecodeTimeout
from ..inference import Predictor
from ..model import TimeSformer
from .batching import Batcher, DeadlineExceeded, QueueFull, Stopped
from .errors import BadRequest, out_of_time
from .metrics import Metrics


@dataclass(frozen=True, kw_only=True)
class Settings:
    """``create_app``'s options."""

    max_batch: int = 8  # clips per model call
    max_wait_ms: float = 20.0  # how long a batch waits to fill
    queue_size: int = 64  # requests waiting for the model (and explanations waiting their turn); past it, 503
    max_upload_mb: float = 200.0
    api_key: str | None = None  # None: no key asked for
    warmup: bool = True  # a full batch through the model before /healthz says ready
    request_timeout: float = 60.0  # seconds from a request's head to its answer; past it, 503
    min_upload_rate: float = 16 * 1024  # bytes/s an upload must keep up once its first upload_grace seconds are spent
    upload_grace: float = 10.0
    body_start: float = 3.0  # seconds from an upload's head to its body's first bytes; past it, 408 (no slot held)
    docs: bool = False  # /docs, /redoc and /openapi.json

    @property
    def upload_slots(self) -> int:
        """Uploads in flight at most (reading, decoding, queued, running, and their threads' work after a timeout);
        past it, 503 before more of the body is read."""
        return self.queue_size + 2 * self.max_batch

    @property
    def decode_threads(self) -> int:
        """Threads that save, probe and decode uploads: enough to decode a full batch at once."""
        return self.max_batch

    @property
    def max_upload_bytes(self) -> int:
        """The most body bytes an upload may send: ``max_upload_mb`` and 64 KiB for the multipart framing."""
        return int(self.max_upload_mb * 2**20) + 2**16


class Jobs:
    """The work one request handed to other threads (their futures), and the temporary folder its upload is copied
    to: the guard waits for all of the work before it gives the request's upload slot back, and a folder that a
    thread may still read is removed only then."""

    def __init__(self):
        self.futures: list[Future] = []
        self.folders: list[str] = []

    def add(self, future: Future) -> Future:
        self.futures.append(future)
        return future

    @contextlib.contextmanager
    def folder(self):
        """A new temporary folder for the request's upload, for the ``with`` block. It is removed as the block ends
        when no job is running, else once they are done (a decode given up on at the deadline may still read it)."""
        path = tempfile.mkdtemp(prefix="timesformer-upload-")
        try:
            yield path
        finally:
            if all(f.done() for f in self.futures):
                shutil.rmtree(path, ignore_errors=True)
            else:
                self.folders.append(path)

    async def finished(self):
        """Return once every job has ended, or was cancelled before it started, and the folders are removed; the
        jobs' outcomes are not wanted here (the request has them, or gave up on them)."""
        waiting = [asyncio.wrap_future(f) for f in self.futures if not f.done()]
        if waiting:
            await asyncio.wait(waiting)
            for w in waiting:
                if not w.cancelled():
                    w.exception()  # seen: asyncio would log an outcome nobody read
        self.futures.clear()
        while self.folders:
            shutil.rmtree(self.folders.pop(), ignore_errors=True)


@dataclass(eq=False, kw_only=True)
class ServerState:
    """The app's shared state. ``model`` is the fp32 model for ``/v1/explain`` (None: no explanations)."""

    predictor: Predictor
    settings: Settings
    metrics: Metrics
    model: TimeSformer | None = None
    batcher: Batcher | None = None  # started and closed by the app's lifespan, as are the two pools
    decoders: ThreadPoolExecutor | None = None  # settings.decode_threads: uploads saved, probed, decoded
    explainer: ThreadPoolExecutor | None = None  # one thread: one rollout at a time (pyplot is not thread-safe)
    ready: bool = False
    uploads: int = 0  # upload slots taken (on the event loop only: no lock)
    _explaining: set = field(default_factory=set)  # the explaining thread's jobs not yet done (their futures)
    _other_views: dict = field(default_factory=dict)  # (clips, crops) -> a Predictor sharing the model

    @property
    def default_views(self) -> tuple[int, int]:
        return self.predictor.spec.num_clips, self.predictor.spec.num_crops

    def predictor_for(self, views: tuple[int, int]) -> Predictor:
        """The predictor for ``views`` (clips, crops): the server's own, or one sharing its model."""
        if views == self.default_views:
            return self.predictor
        if views not in self._other_views:
            self._other_views[views] = self.predictor.with_views(*views)
        return self._other_views[views]

    async def run(self, request: Request, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on a decoding thread, one of ``request``'s jobs: the event loop never computes. A
        request cancelled (its deadline) before the call starts skips it; a ``DecodeTimeout`` (a decode that passed
        the request's deadline) is a 503 with ``Retry-After``."""
        return await self._outcome(request.state.jobs.add(self.decoders.submit(fn, *args, **kwargs)))

    async def explain(self, request: Request, fn, *args):
        """``fn(*args)`` on the one explaining thread, after the rollouts before it (at most ``queue_size`` running or
        waiting: past it 503). An explanation counts until its thread is done with it, not until its request is."""
        self._explaining = {f for f in self._explaining if not f.done()}
        if len(self._explaining) >= self.settings.queue_size:
            raise BadRequest(503, "the server is busy explaining; retry shortly", {"Retry-After": "5"})
        future = request.state.jobs.add(self.explainer.submit(fn, *args))
        self._explaining.add(future)
        return await self._outcome(future)

    async def _outcome(self, future: Future):
        """A thread's result; a ``DecodeTimeout`` (a decode that passed the request's deadline) is a 503."""
        try:
            return await asyncio.wrap_future(future)
        except DecodeTimeout:
            raise out_of_time(self.settings.request_timeout) from None

    async def logits(self, request: Request, views: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Views through the batcher, their logits averaged: ``v t c S S``, ``v t`` -> ``classes``. A full queue, a
        server shutting down or the request's deadline passed in the queue is a 503 with ``Retry-After``."""
        try:
            future = request.state.jobs.add(self.batcher.submit(views, masks, request.state.deadline))
        except QueueFull:
            raise BadRequest(
                503, "the server is busy: every queue slot is taken; retry shortly", {"Retry-After": "1"}
            ) from None
        except Stopped:
            raise BadRequest(503, "the server is shutting down", {"Retry-After": "5"}) from None
        try:
            return (await asyncio.wrap_future(future)).mean(0)
        except Stopped:
            raise BadRequest(503, "the server is shutting down", {"Retry-After": "5"}) from None
        except DeadlineExceeded:
            raise out_of_time(self.settings.request_timeout) from None


async def server_state(request: Request) -> ServerState:
    """``async``: FastAPI runs a plain ``def`` dependency on anyio's thread pool, a thread hop for every request."""
    return request.app.state.server


Server = Annotated[ServerState, Depends(server_state)]
