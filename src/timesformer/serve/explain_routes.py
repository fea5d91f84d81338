"""``POST /v1/explain``: attention rollout of the upload's centre clip, with the PNG grid and the GIF as data URLs.

It runs the fp32 model the app was given (the predictor's copy may be bf16 or int8), one rollout at a time on the
server's one explaining thread: each is a full forward of its own, and pyplot is not thread-safe. A request whose
deadline passes while it waits its turn is skipped, and its decode stops at the deadline.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import time
from pathlib import Path

from fastapi import APIRouter, Request

from ..data import ClipSpec, DecodeError
from .errors import BadRequest, hide_path
from .state import Server, ServerState
from .uploads import read_form, save_upload, video_duration

router = APIRouter()


@router.post("/v1/explain")
async def explain(request: Request, state: Server):
    """Attention rollout of the centre clip: per-frame maps and importance, with the PNG grid and the GIF."""
    if state.model is None:
        raise BadRequest(404, "this server was started without the fp32 model that explanations need")
    start = time.perf_counter()
    max_mb = state.settings.max_upload_mb
    form, upload = await read_form(request)
    try:
        with request.state.jobs.folder() as tmp:  # removed once no thread works on it
            path = await state.run(request, save_upload, upload, tmp, max_mb)
            body = await state.explain(request, explain_file, state, path, tmp, request.state.deadline)
    finally:
        await form.close()
    return {**body, "latency_ms": round((time.perf_counter() - start) * 1000, 1)}


def explain_file(state: ServerState, path: str, tmp: str, deadline: float | None = None) -> dict:
    """The rollout of the video at ``path`` as the response body; its images are written to ``tmp`` first
    (blocking: the explaining thread runs it). Decoding past ``deadline`` (``time.monotonic()`` s) raises
    ``DecodeTimeout``."""
    from ..inference.explain import explain_video
    from ..viz import plot_explanation

    model, served = state.model, state.predictor.spec  # the fp32 model's clip, sampled as the predictor's are
    spec = ClipSpec.from_config(
        model.config, sampling=served.sampling, sampling_rate=served.sampling_rate, fps=served.fps
    )
    spec = dataclasses.replace(spec, max_pixels=served.max_pixels, decoder=served.decoder)
    video_duration(path, spec, deadline)  # a 400 naming why, before any work, for a file that is no video
    try:
        result = explain_video(model, path, spec, deadline=deadline)
    except DecodeError as err:
        raise BadRequest(400, f"the upload is not a readable video: {hide_path(err, path)}") from None
    png, gif = os.path.join(tmp, "explain.png"), os.path.join(tmp, "explain.gif")
    plot_explanation(
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
