"""Valid video files built to cost as much as possible: what an attacker uploads (issue 21's table).

Each builder writes a small, well-formed file with PyAV and returns its path: huge frames that compress to almost
nothing, headers that claim a duration the data doesn't hold, and a long video that is cheap to store.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .videos import write_video


def h264_stream(container, width: int, height: int, **options):
    """A 30 fps libx264 stream of ``width x height`` yuv420p in ``container``, fast and small: what costs the attacker
    the least to make (``options`` replace x264's)."""
    stream = container.add_stream("libx264", rate=30)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    stream.options = {"preset": "ultrafast", "crf": "40", **options}
    return stream


def write_huge_frames(path: Path, size: int, num_frames: int = 2) -> Path:
    """``num_frames`` H.264 frames of ``size x size`` pixels (8000: about 230 KiB for 2 frames, 8 GiB as float)."""
    import av

    with av.open(str(path), "w") as container:
        stream = h264_stream(container, size, size)
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


def write_thin_frames(path: Path, width: int, height: int, num_frames: int = 2) -> Path:
    """H.264 frames of ``width x height`` (16 x 2000: 1.6 KiB; resized to a 224 short side, 28000 pixels long)."""
    import av

    with av.open(str(path), "w") as container:
        stream = h264_stream(container, width, height)
        for i in range(num_frames):
            rgb = np.zeros((height, width, 3), np.uint8)
            rgb[: height // 4] = 255 * (i % 2)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_growing_frames(path: Path, small: int, large: int, num_large: int = 2) -> Path:
    """An MPEG-TS whose header (its first frames) says ``small x small`` and whose later frames are ``large x large``:
    two TS segments back to back, as a stream that switches resolution is."""
    import av

    def segment(size: int, count: int, start: int) -> bytes:
        part = path.with_suffix(f".{size}.ts")
        with av.open(str(part), "w", format="mpegts") as container:
            stream = h264_stream(container, size, size)
            for i in range(count):
                rgb = np.zeros((size, size, 3), np.uint8)
                rgb[: size // 4, : size // (i + 2)] = 255
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = start + i
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        data = part.read_bytes()
        part.unlink()
        return data

    path.write_bytes(segment(small, 30, 0) + segment(large, num_large, 30))
    return path


def write_overflowing_duration(path: Path, seconds: float) -> Path:
    """An MKV of two 64x64 frames with a 1 ns timecode scale and a header claiming ``seconds`` (9e12: its timestamps
    in stream units overflow int64)."""
    write_video(path.with_suffix(".tmp.mkv"), 2, size=64)
    data = bytearray(path.with_suffix(".tmp.mkv").read_bytes())
    path.with_suffix(".tmp.mkv").unlink()
    at = data.find(b"\x2a\xd7\xb1")  # TimecodeScale: a 3-byte uint, 1,000,000 ns by default
    if at < 0 or data[at + 3 : at + 7] != b"\x83\x0f\x42\x40":
        raise RuntimeError(f"no 3-byte TimecodeScale of 1 ms in {path}: the muxer changed its layout")
    data[at + 4 : at + 7] = b"\x00\x00\x01"
    at = data.find(b"\x44\x89")
    data[at + 3 : at + 11] = struct.pack(">d", seconds * 1e9)
    path.write_bytes(bytes(data))
    return path


def write_without_keyframe(path: Path, size: int, num_frames: int) -> Path:
    """An H.264 MP4 of ``num_frames`` P-frames whose keyframe was dropped: every packet decodes, none gives a frame."""
    import av

    source = path.with_suffix(".src.mp4")
    with av.open(str(source), "w") as container:
        stream = h264_stream(container, size, size, crf="51", **{"x264-params": f"keyint={num_frames + 10}:bframes=0"})
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((size, size, 3), np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        template = src.streams.video[0]
        stream = out.add_stream_from_template(template)
        for k, packet in enumerate(src.demux(template)):
            if k > 0 and packet.dts is not None:  # the first packet holds the keyframe
                packet.stream = stream
                out.mux(packet)
    source.unlink()
    return path
