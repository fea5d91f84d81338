"""Decoding: a video file (PyAV) or a folder of frames -> uint8 frames at given times.

Legend: ``t c H W`` frames x channels x pixels. Everything is addressed by time (seconds from the first
frame), so variable-frame-rate videos sample correctly: the frame returned for time ``s`` is the one on screen
then, i.e. the last frame whose timestamp is <= ``s``.

A file costs what its clip needs, not what it claims. Frames larger than ``max_pixels`` (width x height) are
refused before the decoder allocates them (FFmpeg's own ``max_pixels`` check, in the probe and in decoding); frames
are scaled to ``short_side`` in the decoder's format (libswscale, from YUV) before they become RGB arrays, and only
the frames a clip returns are kept; a header's duration is a claim, and a negative or non-finite one is refused.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import math
import os
import re
import sys
import threading
import time
import traceback
import weakref
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .transforms import short_side_size

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv", ".flv", ".3gp")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_PIXELS = 8192 * 8192  # default largest frame (width x height) a reader decodes
DECODERS = ("pyav", "torchcodec")  # a video file's decoders: PyAV (the default), torchcodec (optional)
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


TRIM_PIXELS = 4096 * 2160  # closing a video with larger frames gives the freed heap back (``trim_heap``)
MAX_ASPECT = 10  # a frame's long side over its short side, at most: a clip's resize scales the long side too
THREAD_BYTES = 256 * 2**20  # frame threads hold a frame each: past this many bytes in flight, slice threads


# FFmpeg's decoder threads are not copied by ``fork``: a forked child (a DataLoader worker) must neither free a
# decoder it inherited open (that joins threads the child doesn't have: a hang, or a crash) nor decode with it
_OPEN_READERS: weakref.WeakSet = weakref.WeakSet()  # this process's readers with an open decoder


def _after_fork_in_child():
    for reader in list(_OPEN_READERS):
        try:
            reader.disown()
        except Exception:  # a reader half-open in another thread at the fork: the others still need this
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _keep_forever(objects):
    """One more reference to each of ``objects`` that nothing ever drops, not even the interpreter's exit."""
    for obj in objects:
        if obj is not None:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def _release_frames(err: BaseException, outer: BaseException | None):
    """Clear the locals of the finished frames that ``err``, and the exceptions it chains back to ``outer`` (the one
    being handled when the call began: the caller's own), passed through: they hold the decoder, which would
    otherwise live as long as the exception (or its cycle: until a collection, which may run in a forked child)."""
    seen = set()
    while err is not None and err is not outer and id(err) not in seen:
        seen.add(id(err))
        traceback.clear_frames(err.__traceback__)
        err = err.__context__


class DecodeTimeout(Exception):
    """Decoding passed its ``deadline`` (``time.monotonic()`` seconds): not a bad file, a request out of time."""


def _cores() -> int:
    """The cores this process may run on (its affinity: taskset, a container's cpuset), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc
        return None


def trim_heap():
    """Return freed heap memory to the OS (glibc keeps what the decoder's threads freed in their arenas: 100 MiB and
    more after frames of 8000 x 8000); nothing where the C library has no ``malloc_trim``."""
    if (trim := _malloc_trim()) is not None:
        trim(0)


def check_frame(path, width: int, height: int, max_pixels: int):
    """A ``DecodeError`` naming the size and the limit for a ``width x height`` frame over ``max_pixels``, or whose
    long side is more than ``MAX_ASPECT`` times its short side (16 x 16384: scaled to a 224 short side, one float
    frame would take 2.4 GiB)."""
    if width * height > max_pixels:
        raise DecodeError(
            f"{path}: frames of {width}x{height} ({width * height:,} pixels) are over the limit of {max_pixels:,} "
            "pixels (max_pixels)"
        )
    if min(width, height) > 0 and max(width, height) > MAX_ASPECT * min(width, height):
        raise DecodeError(
            f"{path}: frames of {width}x{height} have an aspect ratio of "
            f"{max(width, height) / min(width, height):.0f}:1; at most {MAX_ASPECT}:1"
        )


def limit_decoder(stream, path, max_pixels: int):
    """Bound what ``stream``'s decoder may allocate, before it decodes: its header's frame size checked
    (``check_frame``), and FFmpeg's own ``max_pixels`` set so a frame is refused before it is allocated. Frame
    threads hold a frame each: they are used only while the header's frames fit ``THREAD_BYTES`` over all of them,
    and then cap frames that grow mid-stream (a stream switching resolution) at that share; past it, slice threads
    and ``max_pixels``."""
    ctx = stream.codec_context
    check_frame(path, ctx.width, ctx.height, max_pixels)
    threads = _cores() + 1
    per_thread = THREAD_BYTES * 2 // (3 * threads)  # pixels of a yuv420 frame per frame thread
    if (ctx.width + 64) * (ctx.height + 64) <= per_thread:  # FFmpeg aligns the width it checks to 64
        stream.thread_type, limit = "AUTO", min(per_thread, max_pixels)
    else:
        stream.thread_type, limit = "SLICE", max_pixels
    ctx.options = {"max_pixels": str(limit)}


def frame_rgb(frame, short_side: int | None) -> np.ndarray:
    """A decoded frame as ``H W 3`` uint8 RGB, its short side scaled down to ``short_side`` first (never up; None:
    full size) in the decoder's own format (libswscale: area-weighted bilinear from YUV, one pass, no full-size RGB
    copy), to the size ``transforms.resize_short_side`` gives: a clip's resize to that side has nothing left to do."""
    if short_side is None or min(frame.width, frame.height) <= short_side:
        return frame.to_ndarray(format="rgb24")
    height, width = short_side_size(frame.height, frame.width, short_side)
    return frame.reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR").to_ndarray()


def check_deadline(path, deadline: float | None):
    """``DecodeTimeout`` once ``deadline`` (``time.monotonic()`` seconds; None: none) has passed."""
    if deadline is not None and time.monotonic() > deadline:
        raise DecodeTimeout(f"{path}: decoding passed its deadline")


# what PyAV and FFmpeg raise on damaged input (InvalidDataError is an FFmpegError and a ValueError ...); anything
# else -- a MemoryError, a bug -- is not a damaged file and propagates
_DECODE_ERRORS = (OSError, ValueError, EOFError, RuntimeError, OverflowError)
_LOG_LEVEL = threading.Lock()  # held while FrameFolderReader reads FFmpeg's log


class VideoReader:
    """Frames of a video file by time, decoding only what a clip needs.

    ``frames_at(times)`` seeks to the keyframe before the first time, decodes forward, converts to RGB only the
    frames it returns, skips decoding non-reference frames while the next requested time is far ahead, seeks
    again across long gaps (``SEEK_GAP``, or more than the longest keyframe interval seen: with a keyframe every 16
    frames, a clip of 8 frames 32 apart decodes 8 short runs, not the whole span), and stops after the last
    requested time.

    A process forked while a reader is open (a DataLoader's workers) keeps the decoder it inherited, never freeing
    it (that would join FFmpeg threads the fork didn't copy: a hang), and the reader reopens its file there on
    first use.

    Args:
        short_side: frames come out with their shorter side scaled down to this (never up); None: full size.
        max_pixels: frames larger than this (width x height), or more than ``MAX_ASPECT`` times wider than tall (or
            taller than wide), are a ``DecodeError``, raised before decoding them.
        deadline: ``time.monotonic()`` seconds; decoding past it raises ``DecodeTimeout``.
    """

    SEEK_GAP = 2.0  # seconds: a longer gap to the next requested time is crossed by seeking

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        short_side: int | None = None,
        max_pixels: int = MAX_PIXELS,
        deadline: float | None = None,
    ):
        _av()  # PyAV missing: say so before anything else
        self.path, self.short_side, self.max_pixels, self.deadline = Path(path), short_side, max_pixels, deadline
        try:
            if not self.path.is_file():
                raise DecodeError(f"{self.path}: no such file")
            if self.path.stat().st_size == 0:
                raise DecodeError(f"{self.path}: empty file")
        except OSError as err:
            raise DecodeError(f"{self.path}: can't read it ({err})") from None
        self._inherited = False  # opened by the process this one forked from: reopened on first use
        self.open_decoder()
        self.frames_decoded = 0  # how many frames the decoder produced so far (tests and benchmarks read it)
        # seconds: the longest seen between consecutive keyframes decoded in a row (inf once a seek by it skipped
        # nothing: the intervals vary, and seeking by them stops)
        self.key_interval = None
        self.partial = None  # why decoding stopped before the end of the video, once it has

    def open_decoder(self):
        """Open the file and its video stream's decoder (the constructor does; a forked child again)."""
        av = _av()
        try:
            # the decoder's own limit, for the probe that runs inside open(): a bigger frame is never allocated
            self.container = av.open(str(self.path), options={"max_pixels": str(self.max_pixels)})
        except (av.error.FFmpegError, *_DECODE_ERRORS) as err:
            raise DecodeError(f"{self.path}: not a readable video ({err})") from None
        try:
            self._open_stream()
        except DecodeError:
            self.container.close()
            self.container = self.stream = None
            raise
        except (av.error.FFmpegError, *_DECODE_ERRORS) as err:
            self.container.close()
            self.container = self.stream = None
            raise DecodeError(f"{self.path}: {err}") from None
        _OPEN_READERS.add(self)

    def decoders(self) -> tuple:
        """What holds decoder threads: freed only by the process that opened them."""
        return (self.container, self.stream)

    def disown(self):
        """In a forked child: keep the inherited decoders (never freed here) and reopen the file on first use."""
        _keep_forever(self.decoders())
        self.container = self.stream = None
        self._inherited = True

    def reopen_if_inherited(self):
        """Open the file again in a forked child that inherited this reader open; nothing otherwise."""
        if self._inherited:
            self.open_decoder()
            self._inherited = False

    def _open_stream(self):
        if not self.container.streams.video:
            raise DecodeError(f"{self.path}: no video stream")
        self.stream = self.container.streams.video[0]
        if self.stream.codec_context is None:  # a codec tag FFmpeg has no decoder for
            raise DecodeError(f"{self.path}: no decoder for its video codec")
        limit_decoder(self.stream, self.path, self.max_pixels)
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
        if not 0 <= self.duration < math.inf:  # a claim only: what decodes caps it (``partial``), but never this
            raise DecodeError(f"{self.path}: its header claims a duration of {self.duration} s; expected >= 0 s")
        self.num_frames = self.stream.frames or round(self.duration * self.fps)

    def close(self):
        self._inherited = False
        if self.container is not None:
            ctx = self.stream.codec_context
            huge = ctx.width * ctx.height > TRIM_PIXELS
            self.container.close()
            self.container = self.stream = ctx = None  # the decoder and its frames go with the last reference
            if huge:
                trim_heap()  # glibc keeps what the decoder's threads freed: hand it back
        _OPEN_READERS.discard(self)

    def __del__(self):  # a reader dropped unclosed: its container and stream hold each other, in a cycle
        try:
            self.close()
        except Exception:  # a reader half-built, or the interpreter shutting down
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _time(self, frame) -> float:
        return float((frame.pts - self.start_pts) * self.time_base) if frame.pts is not None else 0.0

    def _seek(self, seconds: float) -> float | None:
        """Seek to the keyframe at or before ``seconds``; at or before 0, to the file's beginning. Returns the time
        sought, None for the beginning (nothing lies before it)."""
        if seconds <= 0:  # by the container's clock: MPEG-TS seeking to its own first timestamp lands past it
            self.container.seek(0, backward=True, any_frame=False)
            return None
        target = min(int(seconds / self.time_base), 2**62) + self.start_pts  # a lying duration: no int64 overflow
        self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        return seconds

    def frames_at(self, times) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames on screen at ``times`` (seconds, any order): ``(uint8 t c H W, bool t)``.

        The bool says whether the time lies within the video; times past its end get its last frame. A file whose
        data ends (or breaks) before the duration it declares is partial: times past its last decodable frame are
        masked out too, and ``self.partial`` says where decoding stopped. Raises ``DecodeError``, or
        ``DecodeTimeout`` past the reader's deadline.
        """
        times = [float(s) for s in times]
        if not times:
            raise ValueError("frames_at needs at least one time")
        self.reopen_if_inherited()
        outer = sys.exc_info()[1]  # the caller's exception, if it calls from an except block: left as it is
        try:
            return self._frames_at(times)
        except (DecodeError, DecodeTimeout) as err:  # a bad file or a deadline: bugs keep their locals
            _release_frames(err, outer)
            raise
        except (_av().error.FFmpegError, *_DECODE_ERRORS) as err:  # what FFmpeg or PyAV raise on a damaged file
            _release_frames(err, outer)
            raise DecodeError(f"{self.path}: decoding failed ({type(err).__name__}: {err})") from None

    def _frames_at(self, times: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        order = sorted(range(len(times)), key=times.__getitem__)
        picked: list = [None] * len(times)  # RGB arrays, made as frames are picked: no decoded frame is kept
        converted = [None, None]  # the last frame converted and its array: a frame picked twice converts once

        def rgb(frame) -> np.ndarray:
            if converted[0] is not frame:
                check_frame(self.path, frame.width, frame.height, self.max_pixels)
                array, first = frame_rgb(frame, self.short_side), converted[1]
                if first is not None and array.shape != first.shape:  # a resolution switch to another shape
                    raise DecodeError(
                        f"{self.path}: frames of {first.shape[1]}x{first.shape[0]} and {array.shape[1]}x"
                        f"{array.shape[0]} (after scaling) in one clip: the aspect ratio changes mid-stream"
                    )
                converted[:] = frame, array
            return converted[1]

        ctx = self.stream.codec_context
        reorder = 16 / self.fps  # decoding runs ahead of display by the B-frame reorder depth: stay clear of it
        j, prev, last, seeked, last_key, skipped_from = 0, None, None, 0, None, None
        # a seek may land past the keyframe before its target (MPEG-TS seeks by the timestamps it reads): when the
        # first frame after it is later than the target, or none decodes, seek again further back, 1 s, 4 s, 16 s
        # ..., then from the beginning
        sought = landing = self._seek(times[order[0]])  # landing: the target until a frame after the seek decodes
        back = 1.0

        def further_back():
            nonlocal sought, landing, back
            sought, back = self._seek(sought - back), back * 4
            if sought is None:  # from the beginning: nothing lies before it
                landing = None

        try:
            while j < len(order):
                restart = False
                for packet in self.container.demux(self.stream):
                    # per packet: a packet may decode to no frame (a stream without its keyframe) at full cost
                    check_deadline(self.path, self.deadline)
                    for frame in packet.decode():
                        self.frames_decoded += 1
                        now = self._time(frame)
                        if landing is not None and now > landing + _EPS:  # overshot the target
                            further_back()
                            prev, restart = None, True
                            break
                        landing = None
                        if skipped_from is not None:  # the first frame after a seek by the keyframe interval
                            if now <= skipped_from + _EPS:  # it skipped nothing: keyframes are further apart here
                                self.key_interval = math.inf
                            skipped_from = None
                        if frame.key_frame:
                            if last_key is not None and now > last_key:
                                self.key_interval = max(self.key_interval or 0.0, now - last_key)
                            last_key = now
                        while j < len(order) and times[order[j]] + _EPS < now:
                            picked[order[j]] = rgb(prev if prev is not None else frame)  # before the first: first
                            j += 1
                        prev = last = frame
                        if j == len(order):
                            break
                        gap = times[order[j]] - now
                        ctx.skip_frame = "NONREF" if gap > reorder else "DEFAULT"
                        # a keyframe lies between now and the target: seeking skips what lies before it
                        keyframe_ahead = self.key_interval is not None and gap > self.key_interval + 4 / self.fps
                        far = gap > self.SEEK_GAP or keyframe_ahead
                        if far and seeked != j:  # once per target: a seek may land behind us
                            skipped_from = now if gap <= self.SEEK_GAP else None
                            sought = landing = self._seek(times[order[j]])
                            last_key = None  # keyframes after a seek: not consecutive with those before
                            back = 1.0
                            # decode everything after a seek until a frame tells us how far the target is
                            ctx.skip_frame = "DEFAULT"
                            seeked, prev, restart = j, None, True
                            break
                    if j == len(order) or restart:
                        break
                if not restart and landing is not None:  # the stream ended before a frame after the seek decoded
                    further_back()
                    prev, restart = None, True
                if not restart:
                    break  # end of stream
        except (_av().error.FFmpegError, *_DECODE_ERRORS) as err:  # damaged data: what decoded before it stands
            if last is None:
                raise DecodeError(f"{self.path}: decoding failed ({err})") from None
            # its description, not the exception: its traceback holds this frame, and a cycle would keep the
            # decoder (and its threads) for the collector, which may run in a forked child
            error = f"{type(err).__name__}: {err}"
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
                f" ({error})" if error is not None else ""
            )
        for k in order[j:]:  # past the end of the stream (or of its readable part): repeat the last frame
            picked[k] = rgb(last)
        video = torch.from_numpy(np.stack(picked)).permute(0, 3, 1, 2)
        valid = torch.tensor([s < end + _EPS for s in times])
        return video, valid


class FrameFolderReader:
    """A folder of extracted frames (JPEG/PNG), in natural name order, shown at ``fps``: frame ``i`` is on
    screen during ``[i / fps, (i + 1) / fps)``. ``short_side`` and ``max_pixels``: as ``VideoReader``'s."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fps: float = 30.0,
        short_side: int | None = None,
        max_pixels: int = MAX_PIXELS,
        deadline: float | None = None,
    ):
        self.path, self.short_side, self.max_pixels, self.deadline = Path(path), short_side, max_pixels, deadline
        try:
            images = [p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        except OSError as err:
            raise DecodeError(f"{self.path}: can't list the frames ({err})") from None
        # mmaction2's extracted folders: RGB frames img_00001.jpg ... beside optical flow (flow_x_*, flow_y_*)
        rgb = [p for p in images if p.name.startswith("img_")]
        self.files = sorted(rgb or images, key=lambda p: natural_key(p.name))
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
                check_deadline(self.path, self.deadline)
                cache[i] = self._image(av, self.files[i])
            frames.append(cache[i])
        video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
        valid = torch.tensor([float(s) < self.duration + _EPS for s in times])
        return video, valid

    def _image(self, av, file: Path) -> np.ndarray:
        try:
            return self._decode_image(av, file)
        except DecodeError:
            raise
        except Exception as err:
            size = self._refused_size(av, file)  # an image's size is known only to its decoder, which refused it
            if size is not None:
                check_frame(file, *size, self.max_pixels)
            raise DecodeError(f"{file}: not a readable image ({err})") from None

    def _decode_image(self, av, file: Path) -> np.ndarray:
        with av.open(str(file), options={"max_pixels": str(self.max_pixels)}) as img:
            limit_decoder(img.streams.video[0], file, self.max_pixels)
            frame = next(img.decode(video=0))
            check_frame(file, frame.width, frame.height, self.max_pixels)
            return frame_rgb(frame, self.short_side)

    def _refused_size(self, av, file: Path) -> tuple[int, int] | None:
        """``(width, height)`` when FFmpeg refused ``file`` for ``max_pixels``: its log names the size (one more try,
        which stops at the same check, with FFmpeg's error log captured)."""
        import av.logging

        with _LOG_LEVEL:  # FFmpeg's log level is the process's: other threads may log its errors meanwhile
            level = av.logging.get_level()
            av.logging.set_level(av.logging.ERROR)
            try:
                with av.logging.Capture() as logs:
                    try:
                        self._decode_image(av, file)
                    except Exception:
                        pass
            finally:
                av.logging.set_level(level)
        found = [re.search(r"Picture size (\d+)x(\d+) exceeds", text) for _, _, text in logs]
        return next(((int(m[1]), int(m[2])) for m in found if m), None)


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
