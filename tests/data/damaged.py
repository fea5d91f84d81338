"""A corpus of damaged and odd video files, written by the tests: cuts, bit flips, zeroed ranges, a wrong codec tag,
an empty file, audio only, one image. Every video holds frames that carry their index (see ``videos.py``)."""

from __future__ import annotations

from pathlib import Path

from .videos import write_video

FRAMES, FPS = 90, 30  # 3 s


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: max(int(len(data) * fraction), 1)]


def _flip(data: bytes, start: int, count: int = 24, stride: int = 7) -> bytes:
    out = bytearray(data)
    for k in range(count):
        i = start + k * stride
        if i < len(out):
            out[i] ^= 0xA5
    return bytes(out)


def _zero(data: bytes, start: int, length: int) -> bytes:
    return data[:start] + bytes(min(length, len(data) - start)) + data[start + length :]


def write_corpus(root: Path) -> dict[str, Path]:
    """``name -> path``; names say what was done (``cut_…``, ``flip_…``, ``zero_…``, ``tag``, ``empty``,
    ``audio_only``, ``one_image``), and the undamaged sources are ``mp4``, ``faststart`` and ``mkv``."""

    root.mkdir(parents=True, exist_ok=True)
    files = {}
    sources = {"mp4": ("v.mp4", {}), "faststart": ("f.mp4", {"movflags": "faststart"}), "mkv": ("v.mkv", {})}
    for name, (file, container_options) in sources.items():
        path = root / file
        write_video(path, FRAMES, fps=FPS, gop=10, container_options=container_options)
        files[name] = path
    for name in ("mp4", "faststart", "mkv"):
        data = files[name].read_bytes()
        variants = {
            "cut_header": data[: min(40, len(data))],
            "cut_early": _cut(data, 0.2),
            "cut_late": _cut(data, 0.6),
            "cut_near_end": _cut(data, 0.95),
            "flip_header": _flip(data, 8),
            "flip_data": _flip(data, len(data) // 2, count=64, stride=97),
            "zero_data": _zero(data, len(data) // 3, 4096),
        }
        for kind, payload in variants.items():
            path = root / f"{kind}.{name}{files[name].suffix}"
            path.write_bytes(payload)
            files[f"{kind}.{name}"] = path
    tagged = files["faststart"].read_bytes().replace(b"avc1", b"zzzz")
    assert tagged != files["faststart"].read_bytes()
    (root / "tag.mp4").write_bytes(tagged)
    files["tag"] = root / "tag.mp4"
    (root / "empty.mp4").write_bytes(b"")
    files["empty"] = root / "empty.mp4"
    write_audio_only(root / "audio_only.mp4")
    files["audio_only"] = root / "audio_only.mp4"
    write_video(root / "one_image.mp4", 1, fps=FPS)
    files["one_image"] = root / "one_image.mp4"
    for ext, codec in (("mkv", "libx264"), ("webm", "libvpx-vp9"), ("mp4", "libx264")):  # whole, audio longer
        files[f"long_audio.{ext}"] = write_with_audio(root / f"long_audio.{ext}", codec, audio_seconds=3.6)
    return files


def write_audio_only(path: Path) -> Path:
    """Two seconds of AAC and no video stream: a file every demuxer opens and no video reader can use."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        t = np.arange(16000 * 2) / 16000
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        for k in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, k : k + 1024], format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_with_audio(path: Path, codec: str, audio_seconds: float) -> Path:
    """An undamaged video of ``FRAMES`` index frames with an audio track of ``audio_seconds`` (longer than the
    video): the container's duration is the audio's, the video's ends earlier."""
    import av
    import numpy as np

    from .videos import index_frame

    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=FPS)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("libopus" if path.suffix == ".webm" else "aac", rate=48000)
        for i in range(FRAMES):
            for packet in video.encode(av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        samples = (0.1 * np.sin(np.arange(int(48000 * audio_seconds)) / 10)).astype(np.float32)[None]
        for k in range(0, samples.shape[1], 960):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, k : k + 960]), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 48000, k
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return path
