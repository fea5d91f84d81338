"""The uploaded video: the multipart form within the size limit, its temporary copy, its duration and its views.

Callers keep the copy in their request's folder (``Jobs.folder``, removed once the request's threads are done with
it) and close the form, so nothing is left on disk on success or on error. Everything here but ``read_form`` blocks:
the routes run it on the server's decoding threads (``ServerState.run``), off the event loop. The body's size is
bounded as it arrives, by the ``guard``.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import Request

from ..data import ClipSpec, DecodeError
from ..inference import Predictor
from .errors import BadRequest, hide_path


async def read_form(request: Request):
    """The request's form and its ``file`` upload (a 400 for a body that is no multipart form)."""
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as err:  # not multipart, a broken body
        raise BadRequest(400, f"expected a multipart/form-data body with a 'file' field ({err})") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        await form.close()
        raise BadRequest(422, "the 'file' field (a video upload) is missing")
    return form, upload


def save_upload(upload, folder: str, max_mb: float) -> str:
    """Copy ``upload`` into ``folder``; the copy's path. 413 past ``max_mb`` MiB, 400 when empty."""
    suffix = "".join(c for c in Path(upload.filename or "").suffix[:16] if c.isalnum() or c == ".")
    path = os.path.join(folder, "upload" + suffix)  # the extension helps the demuxer; nothing else of the name
    size = _copy(upload.file, path, int(max_mb * 2**20))
    if size is None:
        raise BadRequest(413, f"the upload is over the {max_mb:g} MiB limit")
    if size == 0:
        raise BadRequest(400, "the upload is empty")
    return path


def video_duration(path: str, spec: ClipSpec, deadline: float | None = None) -> float:
    """The upload's duration in seconds as its header claims it, or a 400 naming why it is not a video (frames over
    ``spec.max_pixels`` included). Probing past ``deadline`` (``time.monotonic()`` s) raises ``DecodeTimeout``."""
    try:
        with spec.open(path, train=False, deadline=deadline) as reader:
            return reader.duration
    except DecodeError as err:
        raise BadRequest(400, f"the upload is not a readable video: {hide_path(err, path)}") from None


def decode_views(
    predictor: Predictor,
    path: str,
    start: float | None = None,
    window: float | None = None,
    deadline: float | None = None,
):
    """``predictor.views`` of the upload (or of ``[start, start + window)``), decoding no further than ``deadline``
    (``time.monotonic()`` s; past it ``DecodeTimeout``): ``(v t c S S, v t)``. A file that is not a video, or decodes
    only partly, is a 400. The predictor keeps nothing of the upload after, whatever the outcome."""
    try:
        views, masks = predictor.views(path, start, window, deadline)
    except DecodeError as err:
        raise BadRequest(400, f"the upload is not a readable video: {hide_path(err, path)}") from None
    finally:
        reason = predictor.partial.pop(path, None)
    if reason is not None:
        raise BadRequest(400, f"the upload is a truncated or damaged video: {hide_path(reason, path)}")
    return views, masks


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
