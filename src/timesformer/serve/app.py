"""The HTTP service: ``create_app(predictor)`` -> a FastAPI app (run it with uvicorn, or ``timesformer serve``).

Endpoints, one module of routes each:

- ``POST /v1/predict`` (``predict_routes``): multipart ``file`` (a video) with optional form fields ``topk``
  (1..100), ``views`` (``CLIPSxCROPS``; default the server's), ``window`` and ``stride`` (seconds: a timeline of
  predictions). Returns ``{"labels", "scores", "top", "duration", "latency_ms"}`` and ``"timeline"`` when a window
  was asked for.
- ``POST /v1/explain`` (``explain_routes``): multipart ``file``: attention rollout of the centre clip, with PNG and
  GIF data URLs.
- ``GET /``, ``GET /v1/labels``, ``GET /healthz``, ``GET /metrics`` (``status_routes``): a web page (plain HTML
  and JS, no CDN) that drops a video on these endpoints; the class names; 200 once the warm-up forward ran, else
  503; Prometheus metrics.

Bad input is a 4xx JSON ``{"error": ...}`` naming the problem; a full queue is 503 with ``Retry-After``
(``errors``). Uploads go to a temporary file that is deleted on success and on error (``uploads``). Decoding runs in
worker threads; the model runs on one batching thread (:class:`~timesformer.serve.batching.Batcher`). The routes
share one :class:`~timesformer.serve.state.ServerState` on ``app.state.server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..inference import Predictor
from . import explain_routes, predict_routes, status_routes
from .batching import Batcher
from .errors import BadRequest, bad_request_response
from .metrics import Metrics
from .state import ServerState, Settings

ROUTERS = (status_routes.router, predict_routes.router, explain_routes.router)
OPEN_PATHS = {"/healthz", "/"}  # the page holds no data; it sends the key it is given with each call
KNOWN_PATHS = {route.path for router in ROUTERS for route in router.routes}  # metrics labels; the rest are "other"


def create_app(
    predictor: Predictor,
    *,
    model=None,
    max_batch: int = 8,
    max_wait_ms: float = 20.0,
    queue_size: int = 64,
    max_upload_mb: float = 200.0,
    api_key: str | None = None,
    warmup: bool = True,
) -> FastAPI:
    """The service around ``predictor`` (its model, views and preprocessing). See the module docstring.

    ``model``: the fp32 ``TimeSformer`` that ``/v1/explain`` runs attention rollout on (the predictor's copy may be
    bf16 or int8); without it ``/v1/explain`` answers 404."""
    settings = Settings(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        max_upload_mb=max_upload_mb,
        api_key=api_key,
        warmup=warmup,
    )
    state = ServerState(predictor=predictor, model=model, settings=settings, metrics=Metrics(max_batch))
    app = FastAPI(title="timesformer", lifespan=_lifespan)
    app.state.server = state
    for router in ROUTERS:
        app.include_router(router)
    app.add_exception_handler(BadRequest, bad_request_response)
    app.middleware("http")(_guard)
    return app


async def _guard(request: Request, call_next):
    """The API key (every path but ``OPEN_PATHS``), and each request counted in the metrics."""
    state: ServerState = request.app.state.server
    api_key = state.settings.api_key
    start = time.perf_counter()
    path = request.url.path if request.url.path in KNOWN_PATHS else "other"  # metrics labels stay few and safe
    if api_key is not None and request.url.path not in OPEN_PATHS:
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            response = JSONResponse({"error": "a valid API key is required (X-API-Key header)"}, status_code=401)
            state.metrics.request(path, 401, time.perf_counter() - start)
            return response
    try:
        response = await call_next(request)
    except Exception:
        state.metrics.request(path, 500, time.perf_counter() - start)
        raise
    state.metrics.request(path, response.status_code, time.perf_counter() - start)
    return response


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    """Start the batcher (and warm the model up) before ``/healthz`` says ready; on SIGTERM, uvicorn stops taking
    connections, what is queued runs, then the worker stops."""
    state: ServerState = app.state.server
    settings, predictor = state.settings, state.predictor
    batcher = Batcher(
        predictor.clip_logits,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        queue_size=settings.queue_size,
        on_batch=state.metrics.batch_size,
    )
    state.metrics.queue_depth = lambda: batcher.depth
    state.batcher = batcher
    if settings.warmup:  # a full batch before /healthz says ready: no request pays for the first one's allocations
        spec = predictor.spec
        clips = torch.zeros(settings.max_batch, spec.num_frames, 3, spec.crop_size, spec.crop_size)
        masks = torch.ones(settings.max_batch, spec.num_frames, dtype=torch.bool)
        await asyncio.wrap_future(batcher.submit(clips, masks))
    state.ready = True
    try:
        yield
    finally:
        state.ready = False
        await asyncio.to_thread(batcher.close)
