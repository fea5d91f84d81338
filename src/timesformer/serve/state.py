"""What every route shares, held in one object on ``app.state.server``: the predictor, the server's settings, the
batcher, the worker threads, the metrics. Routes take it as the ``Server`` dependency."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

import torch
from fastapi import Depends, Request

from ..inference import Predictor
from ..model import TimeSformer
from .batching import Batcher, DeadlineExceeded, QueueFull, Stopped
from .errors import BadRequest
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
    docs: bool = False  # /docs, /redoc and /openapi.json

    @property
    def upload_slots(self) -> int:
        """Uploads in flight at most (reading, decoding, queued, running); past it, 503 before the body is read."""
        return self.queue_size + 2 * self.max_batch

    @property
    def decode_threads(self) -> int:
        """Threads that save, probe and decode uploads: enough to decode a full batch at once."""
        return self.max_batch

    @property
    def max_upload_bytes(self) -> int:
        """The most body bytes an upload may send: ``max_upload_mb`` and 64 KiB for the multipart framing."""
        return int(self.max_upload_mb * 2**20) + 2**16


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
    explaining: int = 0  # explanations running or waiting their turn
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

    async def run(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on a decoding thread: the event loop never computes. A request that is cancelled
        (its deadline) before the call starts skips it."""
        return await asyncio.get_running_loop().run_in_executor(self.decoders, functools.partial(fn, *args, **kwargs))

    async def explain(self, fn, *args):
        """``fn(*args)`` on the one explaining thread, after the rollouts before it."""
        return await asyncio.get_running_loop().run_in_executor(self.explainer, fn, *args)

    async def logits(self, views: torch.Tensor, masks: torch.Tensor, deadline: float | None = None) -> torch.Tensor:
        """Views through the batcher, their logits averaged: ``v t c S S``, ``v t`` -> ``classes``. A full queue, a
        server shutting down or a ``deadline`` (``time.monotonic()`` s) passed in the queue is a 503 with
        ``Retry-After``."""
        try:
            future = self.batcher.submit(views, masks, deadline)
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
            raise BadRequest(503, timed_out(self.settings.request_timeout), {"Retry-After": "5"}) from None


def timed_out(seconds: float) -> str:
    return f"the request took longer than the server's {seconds:g} s limit; retry later, or with less to do"


def server_state(request: Request) -> ServerState:
    return request.app.state.server


Server = Annotated[ServerState, Depends(server_state)]
