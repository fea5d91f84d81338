"""Decoding: a video file (PyAV) or a folder of frames -> uint8 frames at given times.

Legend: ``t c H W`` frames x channels x pixels. Everything is addressed by time (seconds from the first
frame), so variable-frame-rate videos sample correctly: the frame returned for time ``s`` is the one on screen
then, i.e. the last frame whose timestamp is <= ``s``.
"""

from __future__ import annotations

import bisect
import os
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv", ".3gp")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_EPS = 1e-4  # seconds: a requested time within this of a frame's timestamp counts as that frame


class DecodeError(UserError):
    """A file that can't be decoded; the message names the file and the reason."""


def _av():
    try:
        import av
    except ImportError:
        raise ImportError("decoding video needs PyAV: pip install 'timesformer[video]'") from None
    return av


def natural_key(name: str) -> list:
    """Sort key that orders numbers by value: ``frame2.jpg`` before ``frame10.jpg``, class ``9`` before ``10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def open_video(path: str | os.PathLike, *, frames_fps: float = 30.0) -> VideoReader | FrameFolderReader:
    """A reader for a video file, or for a folder of extracted frames (shown at ``frames_fps``)."""
    path = Path(path)
    try:
        folder = path.is_dir()
    except OSError as err:
        raise DecodeError(f"{path}: can't read it ({err})") from None
    return FrameFolderReader(path, fps=frames_fps) if folder else VideoReader(path)


# what PyAV and FFmpeg raise on damaged input (InvalidDataError is an FFmpegError and a ValueError ...); anything
# else -- a MemoryError, a bug -- is not a damaged file and propagates
_DECODE_ERRORS = (OSError, ValueError, EOFError, RuntimeError)


class VideoReader:
    """Frames of a video file by time, decoding only what a clip needs.

    ``frames_at(times)`` seeks to the keyframe before the first time, decodes forward, converts to RGB only the
    frames it returns, skips decoding non-reference frames while the next requested time is far ahead, seeks
    again across long gaps, and stops after the last requested time.
    """

    SEEK_GAP = 2.0  # seconds: a longer gap to the next requested time is crossed by seeking

    def __init__(self, path: str | os.PathLike):
        av = _av()
        self.path = Path(path)
        try:
            if not self.path.is_file():
                raise DecodeError(f"{self.path}: no such file")
            if self.path.stat().st_size == 0:
                raise DecodeError(f"{self.path}: empty file")
        except OSError as err:
            raise DecodeError(f"{self.path}: can't read it ({err})") from None
        try:
            self.container = av.open(str(self.path))
        except (av.error.FFmpegError, *_DECODE_ERRORS) as err:
            raise DecodeError(f"{self.path}: not a readable video ({err})") from None
        try:
            self._open_stream()
        except DecodeError:
            self.container.close()
            raise
        except (av.error.FFmpegError, *_DECODE_ERRORS) as err:
            self.container.close()
            raise DecodeError(f"{self.path}: {err}") from None
        self.frames_decoded = 0  # how many frames the decoder produced so far (tests and benchmarks read it)
        self.partial = None  # why decoding stopped before the end of the video, once it has

    def _open_stream(self):
        if not self.container.streams.video:
            raise DecodeError(f"{self.path}: no video stream")
        self.stream = self.container.streams.video[0]
        if self.stream.codec_context is None:  # a codec tag FFmpeg has no decoder for
            raise DecodeError(f"{self.path}: no decoder for its video codec")
        self.stream.thread_type = "AUTO"
        self.time_base = self.stream.time_base or Fraction(1, 1_000_000)
        self.start_pts = self.stream.start_time or 0
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 30.0
        # whether the video stream's own length is known: from its header, or from a container holding nothing
        # else (a container's duration also covers a longer audio track)
        self.length_known = bool(self.stream.duration) or len(self.container.streams) == 1
        if self.stream.duration:
            self.duration = float(self.stream.duration * self.time_base)
        elif self.container.duration:
            self.duration = self.container.duration / 1_000_000
        else:
            self.duration = (self.stream.frames or 0) / self.fps
        self.num_frames = self.stream.frames or round(self.duration * self.fps)

    def close(self):
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _time(self, frame) -> float:
        return float((frame.pts - self.start_pts) * self.time_base) if frame.pts is not None else 0.0

    def _seek(self, seconds: float):
        target = int(seconds / self.time_base) + self.start_pts
        self.container.seek(max(target, self.start_pts), stream=self.stream, backward=True, any_frame=False)

    def frames_at(self, times) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames on screen at ``times`` (seconds, any order): ``(uint8 t c H W, bool t)``.

        The bool says whether the time lies within the video; times past its end get its last frame. A file whose
        data ends (or breaks) before the duration it declares is partial: times past its last decodable frame are
        masked out too, and ``self.partial`` says where decoding stopped. Raises ``DecodeError`` only.
        """
        times = [float(s) for s in times]
        if not times:
            raise ValueError("frames_at needs at least one time")
        try:
            return self._frames_at(times)
        except DecodeError:
            raise
        except (_av().error.FFmpegError, *_DECODE_ERRORS) as err:  # what FFmpeg or PyAV raise on a damaged file
            raise DecodeError(f"{self.path}: decoding failed ({type(err).__name__}: {err})") from None

    def _frames_at(self, times: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        order = sorted(range(len(times)), key=times.__getitem__)
        picked: list = [None] * len(times)
        ctx = self.stream.codec_context
        reorder = 16 / self.fps  # decoding runs ahead of display by the B-frame reorder depth: stay clear of it
        j, prev, last, seeked = 0, None, None, 0
        try:
            self._seek(times[order[0]])
            while j < len(order):
                restart = False
                for packet in self.container.demux(self.stream):
                    for frame in packet.decode():
                        self.frames_decoded += 1
                        now = self._time(frame)
                        while j < len(order) and times[order[j]] + _EPS < now:
                            picked[order[j]] = prev if prev is not None else frame  # before the first frame: first
                            j += 1
                        prev = last = frame
                        if j == len(order):
                            break
                        gap = times[order[j]] - now
                        ctx.skip_frame = "NONREF" if gap > reorder else "DEFAULT"
                        if gap > self.SEEK_GAP and seeked != j:  # once per target: a seek may land behind us
                            self._seek(times[order[j]])
                            # decode everything after a seek until a frame tells us how far the target is
                            ctx.skip_frame = "DEFAULT"
                            seeked, prev, restart = j, None, True
                            break
                    if j == len(order) or restart:
                        break
                if not restart:
                    break  # end of stream
        except (_av().error.FFmpegError, *_DECODE_ERRORS) as err:  # damaged data: what decoded before it stands
            if last is None:
                raise DecodeError(f"{self.path}: decoding failed ({err})") from None
            error = err
        else:
            error = None
        finally:
            ctx.skip_frame = "DEFAULT"
        if last is None:
            raise DecodeError(f"{self.path}: no frame could be decoded")
        # the last decoded frame is on screen until its own duration ends: where the video stream ends, when a
        # time asked for lies past it (a container's duration may be longer: an audio track)
        end = self._time(last) + (float(last.duration * self.time_base) if last.duration else 1 / self.fps)
        if j == len(order):
            end = max(end, self.duration)  # every time asked for lies before a decoded frame
        elif error is not None or (self.length_known and end + 0.5 / self.fps < self.duration):
            self.partial = f"decoding stopped at {end:.2f} s of {self.duration:.2f} s" + (
                f" ({type(error).__name__}: {error})" if error is not None else ""
            )
        for k in order[j:]:  # past the end of the stream (or of its readable part): repeat the last frame
            picked[k] = last
        arrays = {}  # each distinct frame converted once
        for f in picked:
            if id(f) not in arrays:
                arrays[id(f)] = _rgb(f)
        video = torch.from_numpy(np.stack([arrays[id(f)] for f in picked])).permute(0, 3, 1, 2)
        valid = torch.tensor([s < end + _EPS for s in times])
        return video, valid


def _rgb(frame) -> np.ndarray:
    """A decoded frame as ``H W 3`` uint8 RGB."""
    return frame.to_ndarray(format="rgb24")


class FrameFolderReader:
    """A folder of extracted frames (JPEG/PNG), in natural name order, shown at ``fps``: frame ``i`` is on
    screen during ``[i / fps, (i + 1) / fps)``."""

    def __init__(self, path: str | os.PathLike, *, fps: float = 30.0):
        self.path = Path(path)
        try:
            self.files = sorted(
                (p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                key=lambda p: natural_key(p.name),
            )
        except OSError as err:
            raise DecodeError(f"{self.path}: can't list the frames ({err})") from None
        if not self.files:
            raise DecodeError(f"{self.path}: a folder with no frames ({', '.join(IMAGE_EXTENSIONS)})")
        self.fps, self.partial = fps, None
        self.num_frames = len(self.files)
        self.duration = self.num_frames / fps

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def index_at(self, seconds: float) -> int:
        return min(max(int((seconds + _EPS) * self.fps), 0), self.num_frames - 1)

    def frames_at(self, times) -> tuple[torch.Tensor, torch.Tensor]:
        av = _av()
        cache = {}
        frames = []
        for s in times:
            i = self.index_at(float(s))
            if i not in cache:
                try:
                    with av.open(str(self.files[i])) as img:
                        cache[i] = next(img.decode(video=0)).to_ndarray(format="rgb24")
                except Exception as err:
                    raise DecodeError(f"{self.files[i]}: not a readable image ({err})") from None
            frames.append(cache[i])
        video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
        valid = torch.tensor([float(s) < self.duration + _EPS for s in times])
        return video, valid


def decode_all(path: str | os.PathLike) -> tuple[torch.Tensor, list[float]]:
    """Every frame and its time: the decode-everything baseline (benchmarks) and a test oracle."""
    reader = VideoReader(path)
    frames, stamps = [], []
    with reader:
        for frame in reader.container.decode(reader.stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            stamps.append(reader._time(frame))
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2), stamps


def frame_at(stamps: list[float], seconds: float) -> int:
    """Index of the frame on screen at ``seconds`` given sorted frame times (the rule ``frames_at`` follows)."""
    return max(bisect.bisect_right(stamps, seconds + _EPS) - 1, 0)
