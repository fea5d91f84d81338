"""Predictions on live video: frames as they arrive, a ring buffer at the model's sampling stride.

``frames_from(source)`` yields ``(seconds, frame: uint8 c H W)`` from a file, a URL, ``-`` (a stream on stdin, e.g.
MPEG-TS from ffmpeg) or a capture device (``/dev/videoN``), scaled in the decoder as ``predict``'s frames are.
``stream_predictions(predictor, frames)`` keeps the last clip's worth of frames (``num_frames * sampling_rate / fps``
seconds, each resized and cropped as the model sees it) in a ring buffer and predicts every ``every`` input frames on
the clip ending now, sampled as ``predict`` samples; before one clip's worth has arrived, on the frames seen so far
with the rest masked (``warmup="masked"``).
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from collections.abc import Iterable, Iterator

import torch

from ..data import DecodeError
from ..data.decode import MAX_PIXELS, check_frame, frame_rgb, limit_decoder
from ..errors import UserError

log = logging.getLogger(__name__)


def frames_from(
    source: str, *, short_side: int | None = None, max_pixels: int = MAX_PIXELS
) -> Iterator[tuple[float, torch.Tensor]]:
    """``(seconds since the first frame, uint8 c H W)`` for every frame of ``source``, as it is decoded: its short
    side scaled down to ``short_side`` in the decoder's format (None: full size); frames over ``max_pixels`` (width x
    height) are a ``DecodeError`` before they are decoded."""
    try:
        import av
    except ImportError:
        raise ImportError("reading video needs PyAV: pip install 'timesformer[video]'") from None
    target = sys.stdin.buffer if source == "-" else source  # stdin: FFmpeg probes the container it carries
    try:
        container = av.open(
            target,
            mode="r",
            format="v4l2" if source.startswith("/dev/video") else None,
            options={"max_pixels": str(max_pixels)},
        )
    except (av.error.FFmpegError, OSError) as err:
        raise DecodeError(f"{source}: cannot open a video ({type(err).__name__}: {err})") from None
    with container:
        if not container.streams.video:
            raise DecodeError(f"{source}: no video stream")
        stream = container.streams.video[0]
        limit_decoder(stream, source, max_pixels)
        base, first = stream.time_base, None
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                first = frame.pts if first is None else first
                check_frame(source, frame.width, frame.height, max_pixels)
                image = torch.from_numpy(frame_rgb(frame, short_side)).permute(2, 0, 1)
                yield float((frame.pts - first) * base), image
        except av.error.FFmpegError as err:  # a stream that breaks: what came before was predicted
            log.warning("%s: decoding stopped (%s); the frames before it were predicted", source, err)


def stream_predictions(
    predictor,
    frames: Iterable[tuple[float, torch.Tensor]],
    *,
    every: int = 8,
    smooth: int = 1,
    topk: int = 5,
    realtime: bool = False,
    warmup: str = "masked",
) -> Iterator[dict]:
    """``{"time", "top", "coverage", "logits", "window", "frames", "latency_ms"}`` per prediction.

    The window is the clip the model was trained on, ending now: ``span = num_frames * sampling_rate / fps`` seconds,
    sampled as ``predict`` samples a video of that length (``ClipSpec.times``), each time taking the frame on screen
    then. So a prediction's logits are ``predict``'s on ``Predictor.views(path, start=window[0], window=span)``.
    ``time`` is the stream's time when it was made, ``frames`` the sampled times, ``logits`` this window's (before
    smoothing); ``smooth`` averages the probabilities of the last N predictions.

    Before one span has arrived, ``warmup="masked"`` predicts anyway, every ``every`` frames from the first: the
    window starts at the first frame, as ``predict`` places it on a video that short, and its sampled times not yet
    reached are masked; ``coverage`` is the share of the window's frames seen (1.0 once it is full), and ``smooth``
    averages only within the warm-up, then only full windows, so from the first full window on every prediction is
    ``"full"``'s (with ``realtime``, which frames are dropped may differ: the model was busy earlier). ``"full"``
    waits for a whole window. A stream that ends before one span, on a frame not yet predicted, gets a prediction
    then.

    ``realtime``: pace the frames to their timestamps (a file plays as if live). A prediction due while the model
    is still busy with an earlier one is dropped; ``"dropped"`` counts them so far.
    """
    from ..data.transforms import center_crop, resize_short_side

    if every < 1 or smooth < 1:
        raise UserError(f"every and smooth must be >= 1; got {every}, {smooth}")
    if warmup not in ("masked", "full"):
        raise UserError(f"warmup must be 'masked' or 'full'; got {warmup!r}")
    spec, size = predictor.spec, predictor.spec.crop_size
    span = spec.num_frames * spec.sampling_rate / spec.fps
    offsets = [float(t) for t in spec.times(span, train=False)]
    buffer: collections.deque = collections.deque()  # (time, frame resized and centre-cropped, as the model sees it)
    recent: collections.deque = collections.deque(maxlen=smooth)
    start_wall, busy_until, dropped, seen, now, predicted, was_full = None, 0.0, 0, 0, 0.0, 0, False
    for now, frame in frames:
        if realtime:
            start_wall = time.monotonic() - now if start_wall is None else start_wall
            time.sleep(max(0.0, start_wall + now - time.monotonic()))
        buffer.append((now, center_crop(resize_short_side(frame[None], size), size)[0]))
        while len(buffer) > 1 and buffer[1][0] <= now - span:  # the frame on screen at the window's start stays
            buffer.popleft()
        seen += 1
        full = now - buffer[0][0] >= offsets[-1] - 1e-6
        if seen % every or not (full or warmup == "masked"):
            continue  # not due, or less than one window seen yet
        if realtime and start_wall + now < busy_until:  # this frame came while the model was busy
            dropped += 1
            continue
        start = now - offsets[-1] if full else buffer[0][0]  # a window not yet full starts at the first frame
        if full and not was_full:  # smoothing starts again: from here on, what --warmup full gives
            recent.clear()
            was_full = True
        yield _predict(predictor, now, start, offsets, buffer, recent, topk, dropped if realtime else None)
        busy_until, predicted = time.monotonic(), seen
    if buffer and not full and predicted != seen:  # a stream shorter than one window, its last frame unpredicted
        yield _predict(predictor, now, buffer[0][0], offsets, buffer, recent, topk, dropped if realtime else None)


def _predict(predictor, now: float, start: float, offsets, buffer, recent, topk: int, dropped: int | None) -> dict:
    begin = time.perf_counter()
    picked, valid = [], []
    for offset in offsets:  # the frame on screen at each sampled time (the last one past the end, masked)
        target = start + offset
        frame = next((f for t, f in reversed(buffer) if t <= target + 1e-4), buffer[0][1])  # as frames_at picks
        picked.append(frame)
        valid.append(target <= now + 1e-6)
    clip = predictor.decoder.transform.view(torch.stack(picked), 0)[None]
    logits = predictor.clip_logits(clip, torch.tensor(valid)[None])[0].float()
    recent.append(logits.softmax(-1))
    out = {
        "time": round(now, 4),
        "top": predictor.top(torch.stack(list(recent)).mean(0), topk),
        "coverage": round(sum(valid) / len(valid), 4),
        "window": [round(start, 4), round(start + offsets[-1], 4)],
        "frames": [round(start + o, 4) for o in offsets],
        "logits": logits,
        "latency_ms": round((time.perf_counter() - begin) * 1000, 1),
    }
    if dropped is not None:
        out["dropped"] = dropped
    return out
