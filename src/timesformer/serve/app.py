"""The HTTP service: ``create_app(predictor)`` -> a FastAPI app (run it with uvicorn, or ``timesformer serve``).

Endpoints:

- ``POST /v1/predict``: multipart ``file`` (a video) with optional form fields ``topk`` (1..100), ``views``
  (``CLIPSxCROPS``; default the server's), ``window`` and ``stride`` (seconds: a timeline of predictions). Returns
  ``{"labels", "scores", "top", "duration", "latency_ms"}`` and ``"timeline"`` when a window was asked for.
- ``POST /v1/explain``: multipart ``file``: attention rollout of the centre clip, with PNG and GIF data URLs.
- ``GET /``: a web page (plain HTML and JS, no CDN) that drops a video on these endpoints.
- ``GET /v1/labels``, ``GET /healthz`` (200 once the warm-up forward ran, else 503), ``GET /metrics`` (Prometheus).

Bad input is a 4xx JSON ``{"error": ...}`` naming the problem; a full queue is 503 with ``Retry-After``. Uploads go to
a temporary file that is deleted on success and on error. Decoding runs in worker threads; the model runs on one
batching thread (:class:`~timesformer.serve.batching.Batcher`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import tempfile
import time
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from ..data import DecodeError, open_video
from ..data.sampling import clip_start_times
from ..inference import Predictor, parse_views
from .batching import Batcher, QueueFull, Stopped
from .metrics import Metrics

MAX_TOPK = 100
MAX_WINDOWS = 1000  # timeline windows per request


class BadRequest(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _views_option(text: str | None, default: tuple[int, int]) -> tuple[int, int]:
    if text is None or text == "":
        return default
    try:
        return parse_views(text, option="views", max_clips=10)
    except ValueError as err:
        raise BadRequest(422, str(err)) from None


def _number(form, name: str, kind, low, high, default):
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
):
    """The service around ``predictor`` (its model, views and preprocessing). See the module docstring.

    ``model``: the fp32 ``TimeSformer`` that ``/v1/explain`` runs attention rollout on (the predictor's copy may be
    bf16 or int8); without it ``/v1/explain`` answers 404."""
    metrics = Metrics(max_batch)
    state = {"ready": False, "batcher": None, "explaining": 0}
    explaining = asyncio.Lock()
    default_views = (predictor.spec.num_clips, predictor.spec.num_crops)
    limit = int(max_upload_mb * 2**20)
    transforms = {}  # (clips, crops) -> a Predictor sharing the model, for requests asking for other views

    def predictor_for(views: tuple[int, int]) -> Predictor:
        if views == default_views:
            return predictor
        if views not in transforms:
            transforms[views] = predictor.with_views(*views)
        return transforms[views]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(
            predictor.clip_logits,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            queue_size=queue_size,
            on_batch=metrics.batch_size,
        )
        metrics.queue_depth = lambda: batcher.depth
        state["batcher"] = batcher
        if warmup:  # a full batch before /healthz says ready: no request pays for the first one's allocations
            spec = predictor.spec
            clips = torch.zeros(max_batch, spec.num_frames, 3, spec.crop_size, spec.crop_size)
            masks = torch.ones(max_batch, spec.num_frames, dtype=torch.bool)
            await asyncio.wrap_future(batcher.submit(clips, masks))
        state["ready"] = True
        try:
            yield
        finally:  # SIGTERM: uvicorn stops taking connections; what is queued runs, then the worker stops
            state["ready"] = False
            await asyncio.to_thread(batcher.close)

    app = FastAPI(title="timesformer", lifespan=lifespan)

    open_paths = {"/healthz", "/"}  # the page holds no data; it sends the key it is given with each call
    known = {"/", "/healthz", "/metrics", "/v1/labels", "/v1/predict", "/v1/explain"}

    @app.middleware("http")
    async def guard(request: Request, call_next):
        start = time.perf_counter()
        path = request.url.path if request.url.path in known else "other"  # metrics labels stay few and safe
        if api_key is not None and request.url.path not in open_paths:
            given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                response = JSONResponse({"error": "a valid API key is required (X-API-Key header)"}, status_code=401)
                metrics.request(path, 401, time.perf_counter() - start)
                return response
        try:
            response = await call_next(request)
        except Exception:
            metrics.request(path, 500, time.perf_counter() - start)
            raise
        metrics.request(path, response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest):
        return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)

    @app.get("/", include_in_schema=False)
    async def page():
        """The web page: drop a video, watch it, see the top-k bars, the timeline and the attention GIF."""
        return HTMLResponse((Path(__file__).parent / "page.html").read_text())

    @app.get("/healthz")
    async def healthz():
        if not state["ready"]:
            return JSONResponse({"status": "starting"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/labels")
    async def labels():
        return {"labels": [predictor.class_name(i) for i in range(predictor.model.config.num_classes)]}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def run(views: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        try:
            future = state["batcher"].submit(views, masks)
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

    async def decode(pred: Predictor, path: str, start=None, window=None):
        try:
            views, masks = await asyncio.to_thread(pred.views, path, start, window)
        except DecodeError as err:
            raise BadRequest(400, f"the upload is not a readable video: {_hide(err, path)}") from None
        reason = pred.partial.pop(path, None)
        if reason is not None:
            raise BadRequest(400, f"the upload is a truncated or damaged video: {_hide(reason, path)}")
        return views, masks

    async def read_form(request: Request):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + 2**16:
            raise BadRequest(413, f"the upload ({int(length) / 2**20:.1f} MiB) is over the {max_upload_mb:g} MiB limit")
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as err:  # not multipart, a broken body
            raise BadRequest(400, f"expected a multipart/form-data body with a 'file' field ({err})") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            await form.close()
            raise BadRequest(422, "the 'file' field (a video upload) is missing")
        return form, upload

    async def save(upload, tmp: str) -> str:
        suffix = "".join(c for c in Path(upload.filename or "").suffix[:16] if c.isalnum() or c == ".")
        path = os.path.join(tmp, "upload" + suffix)  # the extension helps the demuxer; nothing else of the name
        size = await asyncio.to_thread(_copy, upload.file, path, limit)
        if size is None:
            raise BadRequest(413, f"the upload is over the {max_upload_mb:g} MiB limit")
        if size == 0:
            raise BadRequest(400, "the upload is empty")
        return path

    @app.post("/v1/explain")
    async def explain(request: Request):
        """Attention rollout of the centre clip: per-frame maps and importance, with the PNG grid and the GIF."""
        if model is None:
            raise BadRequest(404, "this server was started without the fp32 model that explanations need")
        start = time.perf_counter()
        form, upload = await read_form(request)
        try:
            if state["explaining"] >= queue_size:  # running or waiting their turn
                raise BadRequest(503, "the server is busy explaining; retry shortly", {"Retry-After": "5"})
            state["explaining"] += 1
            try:
                async with explaining:  # one rollout at a time: a full forward each, and pyplot is not thread-safe
                    with tempfile.TemporaryDirectory(prefix="timesformer-upload-") as tmp:
                        body = await explain_file(await save(upload, tmp), tmp)
            finally:
                state["explaining"] -= 1
        finally:
            await form.close()
        return {**body, "latency_ms": round((time.perf_counter() - start) * 1000, 1)}

    async def explain_file(path: str, tmp: str) -> dict:
        import base64

        from ..data import ClipSpec
        from ..inference.explain import explain_video
        from ..viz import plot_explanation

        await asyncio.to_thread(_duration, path)
        spec = ClipSpec(
            num_frames=model.config.num_frames,
            sampling=predictor.spec.sampling,
            sampling_rate=predictor.spec.sampling_rate,
            fps=predictor.spec.fps,
        )
        try:
            result = await asyncio.to_thread(explain_video, model, path, spec)
        except DecodeError as err:
            raise BadRequest(400, f"the upload is not a readable video: {_hide(err, path)}") from None
        png, gif = os.path.join(tmp, "explain.png"), os.path.join(tmp, "explain.gif")
        await asyncio.to_thread(
            plot_explanation,
            result["frames"],
            result["maps"],
            result["frame_importance"],
            png,
            gif,
            f"predicted {result['predicted']}",
        )
        images = {
            kind: f"data:image/{kind};base64," + base64.b64encode(Path(f).read_bytes()).decode()
            for kind, f in (("png", png), ("gif", gif))
        }
        return {
            "predicted": result["predicted"],
            "frame_importance": result["frame_importance"].tolist(),
            "maps": result["maps"].tolist(),
            **images,
        }

    @app.post("/v1/predict")
    async def predict(request: Request):
        start = time.perf_counter()
        form, upload = await read_form(request)
        try:  # the upload's spooled copy goes with the form
            topk = _number(form, "topk", int, 1, MAX_TOPK, 5)
            views = _views_option(form.get("views"), default_views)
            window = _number(form, "window", float, 0.01, 3600.0, None)
            stride = _number(form, "stride", float, 0.01, 3600.0, window)
            if stride is not None and window is None:
                raise BadRequest(422, "stride needs a window (seconds)")
            with tempfile.TemporaryDirectory(prefix="timesformer-upload-") as tmp:
                path = await save(upload, tmp)
                pred = predictor_for(views)
                duration = await asyncio.to_thread(_duration, path)
                body = {"duration": duration}
                if window is None:
                    probs = (await run(*(await decode(pred, path)))).softmax(-1)
                else:  # one prediction per window; the answer's top-k averages them
                    starts = clip_start_times(duration, window=window, stride=stride).tolist()
                    if len(starts) > MAX_WINDOWS:
                        raise BadRequest(
                            422,
                            f"window {window:g} s every {stride:g} s makes {len(starts)} windows of "
                            f"this {duration:.0f} s video; at most {MAX_WINDOWS}",
                        )
                    entries, every = [], []
                    for begin in starts:
                        every.append((await run(*(await decode(pred, path, begin, window)))).softmax(-1))
                        entries.append(
                            {"start": begin, "end": min(begin + window, duration), "top": pred.top(every[-1], topk)}
                        )
                    body["timeline"] = entries
                    probs = torch.stack(every).mean(0)
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

    return app


def _duration(path: str) -> float:
    """The upload's duration in seconds, or a 400 naming why it is not a video."""
    try:
        with open_video(path) as reader:
            return reader.duration
    except DecodeError as err:
        raise BadRequest(400, f"the upload is not a readable video: {_hide(err, path)}") from None


def _hide(error, path: str) -> str:
    """An error's text without the server's temporary path (the client knows its upload as 'the upload')."""
    return str(error).replace(f"'{path}'", "the upload").replace(path, "the upload")


def _copy(source, path: str, limit: int) -> int | None:
    """Copy an upload to ``path``; its size, or None past ``limit`` bytes (the partial copy is left for the
    temporary folder to remove)."""
    source.seek(0)
    size = 0
    with open(path, "wb") as out:
        while chunk := source.read(1 << 20):
            size += len(chunk)
            if size > limit:
                return None
            out.write(chunk)
    return size
