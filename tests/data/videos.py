"""Test videos written with PyAV, each frame carrying its index as 8 black/white blocks."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

BITS = 10


def index_frame(i: int, size: int = 64) -> np.ndarray:
    """``size x size x 3`` uint8: the top band holds the bits of ``i`` as blocks; the rest is mid-grey."""
    frame = np.full((size, size, 3), 128, np.uint8)
    width = size // BITS
    for b in range(BITS):
        frame[: size // 4, b * width : (b + 1) * width] = 255 if (i >> b) & 1 else 0
    return frame


def read_index(frame: torch.Tensor) -> int:
    """Inverse of ``index_frame`` for a decoded ``c H W`` frame (robust to lossy codecs)."""
    size = frame.shape[-1]
    width = size // BITS
    band = frame[:, 2 : size // 4 - 2].float().mean(0)
    return sum(1 << b for b in range(BITS) if band[:, b * width + 1 : (b + 1) * width - 1].mean() > 128)


def write_video(
    path: Path,
    num_frames: int,
    *,
    codec: str = "libx264",
    fps: int = 30,
    size: int = 64,
    durations_ms: list[int] | None = None,
    options: dict | None = None,
    gop: int | None = None,
    container_options: dict | None = None,
) -> list[float]:
    """Encode frames 0..n-1; return each frame's time in seconds. ``durations_ms`` gives a variable frame rate."""
    import av

    stamps = []
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.options = dict(options or ({"crf": "18"} if codec == "libx264" else {}))
        if gop:
            stream.codec_context.gop_size = gop
        if durations_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        t_ms = 0
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(index_frame(i, size), format="rgb24")
            if durations_ms is not None:
                frame.pts, frame.time_base = t_ms, Fraction(1, 1000)
                stamps.append(t_ms / 1000)
                t_ms += durations_ms[i]
            else:
                stamps.append(i / fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return stamps
