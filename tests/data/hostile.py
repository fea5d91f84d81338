"""Valid video files built to cost as much as possible: what an attacker uploads (issue 21's table).

Each builder writes a small, well-formed file with PyAV and returns its path: huge frames that compress to almost
nothing, headers that claim a duration the data doesn't hold, and a long video that is cheap to store.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .videos import write_video


def write_huge_frames(path: Path, size: int, num_frames: int = 2) -> Path:
    """``num_frames`` H.264 frames of ``size x size`` pixels (8000: about 230 KiB for 2 frames, 8 GiB as float)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "40"}
        for i in range(num_frames):
            rgb = np.zeros((size, size, 3), np.uint8)
            rgb[: size // 4, : size // (i + 2)] = 255  # frames differ: the second is really decoded
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_claimed_duration(path: Path, seconds: float, num_frames: int = 2) -> Path:
    """An MKV of ``num_frames`` 64x64 frames (30 fps) whose header claims ``seconds`` (any float: 1e12, -1e7, nan):
    the Segment Info ``Duration`` element rewritten in place."""
    write_video(path.with_suffix(".tmp.mkv"), num_frames, size=64)
    data = bytearray(path.with_suffix(".tmp.mkv").read_bytes())
    path.with_suffix(".tmp.mkv").unlink()
    at = data.find(b"\x44\x89")  # EBML ID of Duration, then its size: 0x88 = an 8-byte float
    if at < 0 or data[at + 2] != 0x88:
        raise RuntimeError(f"no 8-byte Duration element in {path}: the muxer changed its layout")
    data[at + 3 : at + 11] = struct.pack(">d", seconds * 1000)  # in TimecodeScale units: 1 ms
    path.write_bytes(bytes(data))
    return path


def write_long_video(path: Path, seconds: float) -> Path:
    """A ``seconds``-long video (an MKV) of two 64x64 frames, the second shown for the last second: a 2-hour video
    in a few KiB."""
    write_video(path, 2, size=64, durations_ms=[int((seconds - 1) * 1000), 1000])
    return path
