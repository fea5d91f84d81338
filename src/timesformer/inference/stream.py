"""Predictions on live video: frames as they arrive, a ring buffer at the model's sampling stride.

``frames_from(source)`` yields ``(seconds, frame: uint8 c H W)`` from a file, a URL, ``-`` (a stream on stdin, e.g.
MPEG-TS from ffmpeg) or a capture device (``/dev/videoN``). ``stream_predictions(predictor, frames)`` keeps the
newest ``num_frames`` frames spaced ``sampling_rate / fps`` seconds apart (the clip the model was trained on, ending
now) and predicts every ``every`` input frames once the buffer is full (a stream that ends before it fills gets one
prediction, its missing frames masked).
"""
from __future__ import annotations

import collections
import logging
import sys
import time
from collections.abc import Iterable, Iterator

import torch

from ..data import DecodeError

log = logging.getLogger(__name__)


def frames_from(source: str) -> Iterator[tuple[float, torch.Tensor]]:
    """``(seconds since the first frame, uint8 c H W)`` for every frame of ``source``, as it is decoded."""
    try:
        import av
    except ImportError:
        raise ImportError("reading video needs PyAV: pip install 'timesformer[video]'") from None
    options = {}
    if source == "-":
        target, options["format"] = sys.stdin.buffer, None
    elif source.startswith("/dev/video"):
        target, options["format"] = source, "v4l2"
    else:
        target = source
    try:
        container = av.open(target, mode="r", **{k: v for k, v in options.items() if v})
    except (av.error.FFmpegError, OSError) as err:
        raise DecodeError(f"{source}: cannot open a video ({type(err).__name__}: {err})") from None
    with container:
        if not container.streams.video:
            raise DecodeError(f"{source}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        base, first = stream.time_base, None
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                first = frame.pts if first is None else first
                image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                yield float((frame.pts - first) * base), image
        except av.error.FFmpegError as err:  # a stream that breaks: what came before was predicted
            log.warning("%s: decoding stopped (%s); the frames before it were predicted", source, err)


def stream_predictions(predictor, frames: Iterable[tuple[float, torch.Tensor]], *, every: int = 8, smooth: int = 1,
                       topk: int = 5, realtime: bool = False) -> Iterator[dict]:
    """``{"time", "top", "logits", "frames", "latency_ms"}`` per prediction: ``time`` is the stream's time when it was
    made (the newest frame's), ``frames`` the buffered frames' times (the newest at most one stride before),
    ``logits`` this window's, before smoothing. ``smooth`` averages the probabilities of the last N predictions.

    ``realtime``: pace the frames to their timestamps (a file plays as if live). A prediction due while the model
    is still busy with an earlier one is dropped; ``"dropped"`` counts them so far.
    """
    if every < 1 or smooth < 1:
        raise ValueError(f"every and smooth must be >= 1; got {every}, {smooth}")
    spec = predictor.spec
    stride = spec.sampling_rate / spec.fps if spec.sampling == "dense" else 1 / spec.fps
    buffer: collections.deque = collections.deque(maxlen=spec.num_frames)  # (time, frame)
    recent: collections.deque = collections.deque(maxlen=smooth)
    start_wall, busy_until, dropped, seen = None, 0.0, 0, 0
    for seconds, frame in frames:
        if realtime:
            start_wall = time.monotonic() - seconds if start_wall is None else start_wall
            time.sleep(max(0.0, start_wall + seconds - time.monotonic()))
        if not buffer or seconds >= buffer[-1][0] + stride - 1e-6:
            buffer.append((seconds, frame))
        seen += 1
        if len(buffer) < spec.num_frames or seen % every:
            continue
        if realtime and start_wall + seconds < busy_until:  # this frame came while the model was busy
            dropped += 1
            continue
        yield _predict(predictor, seconds, buffer, recent, topk, dropped if realtime else None)
        busy_until = time.monotonic()
    if buffer and len(buffer) < spec.num_frames:  # a stream shorter than one clip
        yield _predict(predictor, seconds, buffer, recent, topk, dropped if realtime else None)


def _predict(predictor, now: float, buffer, recent, topk: int, dropped: int | None) -> dict:
    start = time.perf_counter()
    times = [t for t, _ in buffer]
    frames = torch.stack([f for _, f in buffer])
    valid = torch.ones(predictor.spec.num_frames, dtype=torch.bool)
    if len(frames) < len(valid):  # pad by repeating the last frame, masked out
        valid[len(frames):] = False
        frames = torch.cat([frames, frames[-1:].expand(len(valid) - len(frames), -1, -1, -1)])
    logits = predictor.clip_logits(predictor.transform.view(frames, 0)[None], valid[None])[0].float()
    recent.append(logits.softmax(-1))
    out = {"time": round(now, 4), "top": predictor.top(torch.stack(list(recent)).mean(0), topk),
           "frames": [round(t, 4) for t in times], "logits": logits,
           "latency_ms": round((time.perf_counter() - start) * 1000, 1)}
    if dropped is not None:
        out["dropped"] = dropped
    return out
