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
(``errors``). Every request passes the ``guard`` first: the API key, its deadline (``request_timeout``), the upload
slots, the body's size and rate as it arrives. Uploads go to a temporary file that is deleted on success and on
error (``uploads``). The event loop only parses and waits: saving, probing and decoding run on ``max_batch``
decoding threads, explanations on one thread of their own, the model on one batching thread
(:class:`~timesformer.serve.batching.Batcher`). The routes share one
:class:`~timesformer.serve.state.ServerState` on ``app.state.server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi import FastAPI

from ..inference import Predictor
from . import explain_routes, predict_routes, status_routes
from .batching import Batcher
from .errors import BadRequest, bad_request_response
from .guard import Guard
from .metrics import Metrics
from .state import ServerState, Settings

ROUTERS = (status_routes.router, predict_routes.router, explain_routes.router)
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
    request_timeout: float = 60.0,
    min_upload_rate: float = 16 * 1024,
    upload_grace: float = 10.0,
    body_start: float = 3.0,
    docs: bool = False,
) -> FastAPI:
    """The service around ``predictor`` (its model, views, preprocessing and ``max_pixels``). See the module
    docstring; every option is a :class:`~timesformer.serve.state.Settings` field.

    ``model``: the fp32 ``TimeSformer`` that ``/v1/explain`` runs attention rollout on (the predictor's copy may be
    bf16 or int8); without it ``/v1/explain`` answers 404. ``docs``: serve ``/docs``, ``/redoc`` and
    ``/openapi.json`` (off by default: they describe the API to anyone who asks)."""
    settings = Settings(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        max_upload_mb=max_upload_mb,
        api_key=api_key,
        warmup=warmup,
        request_timeout=request_timeout,
        min_upload_rate=min_upload_rate,
        upload_grace=upload_grace,
        body_start=body_start,
        docs=docs,
    )
    state = ServerState(predictor=predictor, model=model, settings=settings, metrics=Metrics(max_batch))
    state.metrics.uploads = lambda: state.uploads
    pages = {} if docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="timesformer", lifespan=_lifespan, **pages)
    app.state.server = state
    for router in ROUTERS:
        app.include_router(router)
    app.add_exception_handler(BadRequest, bad_request_response)
    app.add_middleware(Guard, state=state, known_paths=KNOWN_PATHS)
    return app


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
    state.decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="timesformer-decode")
    state.explainer = ThreadPoolExecutor(1, thread_name_prefix="timesformer-explain")
    # PyAV imported here, not by the first upload's decoding thread: its import holds the GIL ~70 ms
    with contextlib.suppress(ImportError):
        import av  # noqa: F401
    if settings.warmup:  # a full batch before /healthz says ready: no request pays for the first one's allocations
        spec = predictor.spec
        clips = torch.zeros(settings.max_batch, spec.num_frames, 3, spec.crop_size, spec.crop_size)
        masks = torch.ones(settings.max_batch, spec.num_frames, dtype=torch.bool)
        await asyncio.wrap_future(batcher.submit(clips, masks))
    # What start-up built (torch, the model) out of the collector's way: a full collection walked it all, ~90 ms
    # holding the GIL (the event loop stalled on the first upload, whose allocations set one off).
    gc.collect()
    gc.freeze()
    state.ready = True
    try:
        yield
    finally:
        state.ready = False
        gc.unfreeze()
        await asyncio.to_thread(batcher.close)
        for pool in (state.decoders, state.explainer):  # what is left of requests given up on: nothing waits for it
            pool.shutdown(wait=False, cancel_futures=True)
