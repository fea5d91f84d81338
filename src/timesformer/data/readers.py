"""``open_video``: the reader for a path -- a folder of frames (``FrameFolderReader``), or a video file through the
decoder asked for (``VideoReader``, PyAV; ``TorchCodecReader``, optional)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .decode import DECODERS, MAX_PIXELS, DecodeError, FrameFolderReader, VideoReader
from .decode_torchcodec import TorchCodecReader


def open_video(
    path: str | os.PathLike,
    *,
    frames_fps: float = 30.0,
    short_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
    deadline: float | None = None,
    decoder: str = "pyav",
) -> VideoReader | FrameFolderReader:
    """A reader for a video file, or for a folder of extracted frames (shown at ``frames_fps``); see the readers for
    ``short_side``, ``max_pixels`` and ``deadline``. ``decoder``: a video file's, ``"pyav"`` (``VideoReader``) or
    ``"torchcodec"`` (``TorchCodecReader``, optional)."""
    path = Path(path)
    try:
        folder = path.is_dir()
    except OSError as err:
        raise DecodeError(f"{path}: can't read it ({err})") from None
    limits = dict(short_side=short_side, max_pixels=max_pixels, deadline=deadline)
    if folder:
        return FrameFolderReader(path, fps=frames_fps, **limits)
    if decoder == "torchcodec":
        return TorchCodecReader(path, **limits)
    if decoder != "pyav":
        raise UserError(f"decoder must be one of {', '.join(DECODERS)}; got {decoder!r}")
    return VideoReader(path, **limits)
