"""The routes that read no upload: the web page at ``/``, ``/healthz``, ``/v1/labels`` and ``/metrics``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from .metrics import CONTENT_TYPE
from .state import Server

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page():
    """The web page: drop a video, watch it, see the top-k bars, the timeline and the attention GIF."""
    return HTMLResponse((Path(__file__).parent / "page.html").read_text())


@router.get("/healthz")
async def healthz(state: Server):
    """200 once the warm-up forward ran (and until shutdown begins), else 503."""
    if not state.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    return {"status": "ok"}


@router.get("/v1/labels")
async def labels(state: Server):
    predictor = state.predictor
    return {"labels": [predictor.class_name(i) for i in range(predictor.model.config.num_classes)]}


@router.get("/metrics")
async def prometheus(state: Server):
    return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)
