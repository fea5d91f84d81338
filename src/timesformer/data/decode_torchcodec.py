"""The optional torchcodec decoder (``data.decoder: torchcodec``): the same frames by time as ``VideoReader``.

Legend: ``t c H W`` frames x channels x pixels. PyAV stays the default and the only decoder the package needs;
torchcodec (``pip install torchcodec``) uses FFmpeg's shared libraries from the system (``apt-get install ffmpeg``)
and must match torch's build (its PyPI wheels are built against CUDA torch; a CPU torch takes the wheel from
``download.pytorch.org/whl/cpu``).

The file is probed with PyAV first, so everything a file is refused for at opening (its header's frame size,
the aspect ratio, a lying duration) is ``VideoReader``'s, with its messages; torchcodec then decodes the frames on
screen at the times asked for, and PyAV answers wherever torchcodec fails or picks another frame.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from ..errors import UserError
from .decode import _EPS, MAX_PIXELS, VideoReader, _cores, check_deadline, check_frame
from .transforms import resize_short_side

log = logging.getLogger(__name__)


@functools.cache
def _torchcodec():
    """torchcodec's ``VideoDecoder``, or a ``UserError`` that says what to install."""
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError as err:
        if getattr(err, "name", None) == "torchcodec":
            raise UserError(
                "data.decoder: torchcodec needs the torchcodec package: pip install torchcodec (and FFmpeg's shared "
                "libraries: apt-get install ffmpeg); or use the default decoder, pyav"
            ) from None
        raise _load_error(err) from None
    except (OSError, RuntimeError) as err:  # its C++ libraries didn't load
        raise _load_error(err) from None
    return VideoDecoder


def _load_error(err: BaseException) -> UserError:
    """What to install, from whether FFmpeg's libraries are there at all (torchcodec's own message names FFmpeg
    whatever failed)."""
    import ctypes.util

    if ctypes.util.find_library("avutil") is None:
        hint = "FFmpeg's shared libraries (4 to 7) were not found: apt-get install ffmpeg (Debian/Ubuntu)"
    else:
        hint = (
            f"FFmpeg is there, so torchcodec was likely built for another torch (this is {torch.__version__}; a CPU "
            "torch needs torchcodec from https://download.pytorch.org/whl/cpu)"
        )
    detail = " ".join(str(err).split())[:600]
    return UserError(f"data.decoder: torchcodec can't load: {hint} ({type(err).__name__}: {detail})")


# what torchcodec raises when it can't decode what it was asked (its C++ errors arrive as these)
_TORCHCODEC_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, OSError)


class TorchCodecReader(VideoReader):
    """``VideoReader``'s frames by time, decoded by torchcodec on ``device`` (``"cpu"``, or ``"cuda"``: NVDEC,
    untested), and by PyAV where torchcodec can't be trusted.

    - The PyAV probe comes first, so every refusal and limit is ``VideoReader``'s, with its messages; its container
      stays open for the fallback.
    - torchcodec scans the packets (exact mode) and decodes the frames on screen at the times asked for
      (``get_frames_played_at``). Each frame is checked to be the one on screen at its time.
    - A call torchcodec fails, or whose frames don't check out (MPEG-TS seeking, damaged data, a stream that
      switches resolution), is answered by ``VideoReader.frames_at``: the same frames, masks and ``partial``
      report, at the cost of a second decode; ``fallbacks`` counts them.
    - Limits: a frame's size is checked (``max_pixels``) after torchcodec decoded it (it has no limit of its own),
      so a stream whose frames grow past its header's costs what they take: use PyAV for untrusted files (``serve``
      always does). ``deadline`` is checked before and after each call into torchcodec, not within one.
    - ``short_side``: frames are scaled down after decoding (bilinear, antialiased, one at a time) to
      ``VideoReader``'s size.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        short_side: int | None = None,
        max_pixels: int = MAX_PIXELS,
        deadline: float | None = None,
        device: str = "cpu",
    ):
        self._decoder_class, self.device = _torchcodec(), device
        self.fallbacks = 0
        super().__init__(path, short_side=short_side, max_pixels=max_pixels, deadline=deadline)
        check_deadline(self.path, self.deadline)  # the scan reads every packet header

    def open_decoder(self):
        super().open_decoder()
        self.offset = float(self.start_pts * self.time_base)  # torchcodec's times are the stream's own
        # as limit_decoder: frame threads (a frame each) only while the header's frames fit THREAD_BYTES
        threads = _cores() if self.stream.thread_type == "AUTO" else 1
        try:
            self.decoder = self._decoder_class(
                str(self.path),
                seek_mode="exact",
                dimension_order="NCHW",
                num_ffmpeg_threads=threads,
                device=self.device,
            )
            meta = self.decoder.metadata
            self.begin = (meta.begin_stream_seconds or 0.0) - self.offset
            end = meta.end_stream_seconds
            self.end = end - self.offset if end is not None else self.duration
        except _TORCHCODEC_ERRORS as err:  # PyAV opened it: PyAV answers
            log.info("%s: torchcodec can't open it (%s); PyAV decodes it", self.path, err)
            self.decoder = None
        if self.decoder is not None and not self.end > self.begin:
            self.decoder = None

    def decoders(self) -> tuple:
        return (*super().decoders(), getattr(self, "decoder", None))  # a fork mid-open: no decoder yet

    def disown(self):
        super().disown()
        self.decoder = None

    def close(self):
        self.decoder = None
        super().close()

    def frames_at(self, times) -> tuple[torch.Tensor, torch.Tensor]:
        """``VideoReader.frames_at``: ``(uint8 t c H W, bool t)`` for ``times`` in seconds, any order."""
        times = [float(s) for s in times]
        if not times:
            raise ValueError("frames_at needs at least one time")
        self.reopen_if_inherited()
        check_deadline(self.path, self.deadline)
        batch = self._played_at(times) if self.decoder is not None else None
        check_deadline(self.path, self.deadline)
        if batch is None:
            self.fallbacks += 1
            return super().frames_at(times)
        video, end = self._scaled(batch), self.end
        if all(s < end for s in times):
            end = max(end, self.duration)  # as VideoReader: within the stream's length, nothing is masked
        elif self.length_known and end + 0.5 / self.fps < self.duration:
            self.partial = f"decoding stopped at {end:.2f} s of {self.duration:.2f} s"
        return video, torch.tensor([s < end + _EPS for s in times])

    def _played_at(self, times: list[float]) -> torch.Tensor | None:
        """torchcodec's frames on screen at ``times`` (``uint8 t c H W``), or None when it fails or a frame is
        not the one on screen at its time."""
        # as VideoReader: a time within _EPS of a frame's timestamp is that frame; before the first frame, the
        # first; past the last, the last (masked)
        wanted = [min(max(s + _EPS, self.begin), self.end - _EPS) for s in times]
        try:
            batch = self.decoder.get_frames_played_at([s + self.offset for s in wanted])
        except _TORCHCODEC_ERRORS as err:
            log.info("%s: torchcodec failed (%s); PyAV decodes the clip", self.path, err)
            return None
        starts = (batch.pts_seconds - self.offset).tolist()
        ends = [a + d for a, d in zip(starts, batch.duration_seconds.tolist())]
        if all(a <= s + 1e-6 and (s < b + 1e-6 or s >= self.end - 2 * _EPS) for s, a, b in zip(wanted, starts, ends)):
            return batch.data
        log.info("%s: torchcodec's frames are not those on screen at the times asked for; PyAV decodes them", self.path)
        return None

    def _scaled(self, video: torch.Tensor) -> torch.Tensor:
        """``uint8 t c H W`` with the short side scaled down to ``short_side`` (never up), after ``check_frame``;
        one frame at a time (a float copy of one frame, not of the clip)."""
        height, width = video.shape[-2:]
        check_frame(self.path, width, height, self.max_pixels)
        if self.short_side is None or min(height, width) <= self.short_side:
            return video
        return torch.stack(
            [resize_short_side(f[None], self.short_side).round_().clamp_(0, 255).to(torch.uint8)[0] for f in video]
        )
