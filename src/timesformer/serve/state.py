"""What every route shares, held in one object on ``app.state.server``: the predictor, the server's settings, the
batcher, the metrics. Routes take it as the ``Server`` dependency."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

import torch
from fastapi import Depends, Request

from ..inference import Predictor
from ..model import TimeSformer
from .batching import Batcher, QueueFull, Stopped
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


@dataclass(eq=False, kw_only=True)
class ServerState:
    """The app's shared state. ``model`` is the fp32 model for ``/v1/explain`` (None: no explanations)."""

    predictor: Predictor
    settings: Settings
    metrics: Metrics
    model: TimeSformer | None = None
    batcher: Batcher | None = None  # started and closed by the app's lifespan
    ready: bool = False
    explaining: int = 0  # explanations running or waiting their turn
    explain_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one rollout at a time
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

    async def logits(self, views: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Views through the batcher, their logits averaged: ``v t c S S``, ``v t`` -> ``classes``. A full queue or a
        server shutting down is a 503 with ``Retry-After``."""
        try:
            future = self.batcher.submit(views, masks)
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


def server_state(request: Request) -> ServerState:
    return request.app.state.server


Server = Annotated[ServerState, Depends(server_state)]
