"""Which moments of a video a clip shows: pure functions returning times in seconds.

Randomness comes only from the ``torch.Generator`` passed in (no global RNG), so a sample is reproducible
from its seed in any DataLoader worker.
"""

from __future__ import annotations

import math

import torch


def _uniform(generator: torch.Generator | None, *shape) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, dtype=torch.float64)


def dense_clip_times(
    duration: float,
    *,
    num_frames: int,
    sampling_rate: int,
    fps: float = 30.0,
    train: bool,
    clip_index: int = 0,
    num_clips: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Times of ``num_frames`` frames taken every ``sampling_rate`` frames at ``fps`` (the Kinetics protocol).

    The clip spans ``num_frames * sampling_rate`` frames at ``fps`` (8 x 32 at 30 fps: 8.5 s). Its start is
    uniform over the video in training; in testing, clip ``clip_index`` of ``num_clips`` starts at the centre of
    the ``clip_index``-th of ``num_clips`` equal parts of the possible starts (one clip: the middle of the video,
    as the paper says; the official code's single test clip starts at 0). Frames are placed as the official code
    does, ``linspace`` over the clip's frame indices, truncated. Videos shorter than the clip start at 0, and the
    times past their end are flagged by the reader (which repeats the last frame).
    """
    span = num_frames * sampling_rate / fps
    room = max(duration - span, 0.0)
    if train:
        start = float(_uniform(generator, 1)) * room
    else:
        start = room * (clip_index + 0.5) / num_clips
    offsets = torch.linspace(0, num_frames * sampling_rate - 1, num_frames, dtype=torch.float64).floor()
    return start + offsets / fps


def segment_times(
    duration: float, *, num_segments: int, train: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One time from each of ``num_segments`` equal segments of the video (TSN; the Something-Something
    protocol): uniformly random within its segment in training, its middle in testing."""
    offsets = _uniform(generator, num_segments) if train else torch.full((num_segments,), 0.5, dtype=torch.float64)
    return (torch.arange(num_segments, dtype=torch.float64) + offsets) * (duration / num_segments)


def window_count(duration: float, *, window: float, stride: float) -> int:
    """How many windows :func:`clip_start_times` gives, computed without making them (a header's duration is a
    claim: a caller bounds the count before anything is allocated)."""
    if not duration > window:  # also NaN
        return 1
    room = duration - window
    full = math.floor((room + 1e-9) / stride) + 1  # starts 0, stride, ... up to the room
    return full + (1 if (full - 1) * stride + window < duration - 1e-6 else 0)  # and one ending at the end


def clip_start_times(duration: float, *, window: float, stride: float) -> torch.Tensor:
    """Start times of sliding windows of ``window`` seconds every ``stride`` seconds covering the whole video
    (the last window ends at the video's end; a video shorter than one window gets one window at 0)."""
    if duration <= window:
        return torch.zeros(1, dtype=torch.float64)
    starts = torch.arange(0.0, duration - window + 1e-9, stride, dtype=torch.float64)
    if starts[-1] + window < duration - 1e-6:
        starts = torch.cat([starts, torch.tensor([duration - window], dtype=torch.float64)])
    return starts
