"""``POST /v1/predict``: the top-k classes of an upload, and with ``window`` (and ``stride``) a timeline along it.

Form fields: ``file`` (the video), ``topk`` (1..100), ``views`` (``CLIPSxCROPS``; default the server's), ``window``
and ``stride`` (seconds). The answer is ``{"labels", "scores", "top", "duration", "latency_ms"}``, and
``"timeline"`` (``[{"start", "end", "top"}]``) when a window was asked for; then the top-k average the windows'.
The timeline is :meth:`Predictor.timeline`'s, with the model calls going through the server's batcher: one window at
a time, each a request of its own in the batcher's queue, so a long timeline shares the model with the others and
ends at the request's deadline (``guard``). Every step but the batcher's runs on the decoding threads.
"""

from __future__ import annotations

import time

import torch
from fastapi import APIRouter, Request

from ..errors import UserError
from ..inference import Predictor, parse_views
from .errors import BadRequest
from .state import Server, ServerState
from .uploads import decode_views, read_form, save_upload, video_duration

MAX_TOPK = 100
MAX_WINDOWS = 1000  # timeline windows per request

router = APIRouter()


@router.post("/v1/predict")
async def predict(request: Request, state: Server):
    start = time.perf_counter()
    max_mb = state.settings.max_upload_mb
    deadline = request.state.deadline  # time.monotonic() s, set by the guard; every decode stops at it
    form, upload = await read_form(request)
    try:  # the upload's spooled copy goes with the form
        topk = _number(form, "topk", int, 1, MAX_TOPK, 5)
        views = _views_option(form.get("views"), state.default_views)
        window = _number(form, "window", float, 0.01, 3600.0, None)
        stride = _number(form, "stride", float, 0.01, 3600.0, window)
        if stride is not None and window is None:
            raise BadRequest(422, "stride needs a window (seconds)")
        with request.state.jobs.folder() as tmp:  # removed once no thread works on it
            path = await state.run(request, save_upload, upload, tmp, max_mb)
            pred = state.predictor_for(views)
            duration = await state.run(request, video_duration, path, pred.spec, deadline)
            body = {"duration": duration}
            if window is None:
                clips, masks = await state.run(request, decode_views, pred, path, None, None, deadline)
                probs = (await state.logits(request, clips, masks)).softmax(-1)
            else:
                body["timeline"], probs = await _timeline(request, state, pred, path, duration, window, stride, topk)
    finally:
        await form.close()
    top = pred.top(probs, topk)
    return {
        "labels": [t["class"] for t in top],
        "scores": [t["prob"] for t in top],
        "top": top,
        **body,
        "latency_ms": round((time.perf_counter() - start) * 1000, 1),
    }


async def _timeline(
    request: Request,
    state: ServerState,
    pred: Predictor,
    path: str,
    duration: float,
    window: float,
    stride: float,
    topk: int,
):
    """``Predictor.timeline`` with the model calls through the batcher and each window decoded on a decoding thread:
    the entries ``[{"start", "end", "top"}]`` and the windows' probabilities averaged (``classes``). Too many windows
    is a 422, counted before any window is made (the duration is the header's claim)."""
    try:
        plan = pred.timeline_windows
        windows = await state.run(request, plan, duration, window=window, stride=stride, max_windows=MAX_WINDOWS)
    except UserError as err:
        raise BadRequest(422, str(err)) from None
    probs = []
    for start, _ in windows:
        clips, masks = await state.run(request, decode_views, pred, path, start, window, request.state.deadline)
        probs.append((await state.logits(request, clips, masks)).softmax(-1))
    timeline = await state.run(
        request, pred.timeline_result, path, duration, windows, probs, window=window, stride=stride, topk=topk
    )
    entries = [{"start": e["start"], "end": e["end"], "top": e["top"]} for e in timeline["entries"]]
    return entries, torch.stack(probs).mean(0)


def _views_option(text: str | None, default: tuple[int, int]) -> tuple[int, int]:
    if text is None or text == "":
        return default
    try:
        return parse_views(text, option="views", max_clips=10)
    except ValueError as err:
        raise BadRequest(422, str(err)) from None


def _number(form, name: str, kind, low, high, default):
    """Form field ``name`` as a ``kind`` in ``[low, high]``; ``default`` when absent; else a 422 naming it."""
    text = form.get(name)
    if text is None or text == "":
        return default
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise BadRequest(422, f"{name} must be a {kind.__name__}; got {text!r}") from None
    if not low <= value <= high:
        raise BadRequest(422, f"{name} must be in [{low}, {high}]; got {text!r}")
    return value
