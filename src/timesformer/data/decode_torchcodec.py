"""The optional torchcodec decoder (``data.decoder: torchcodec``): the same frames by time as ``VideoReader``.

Legend: ``t c H W`` frames x channels x pixels. PyAV stays the default and the only decoder the package needs;
torchcodec (``pip install torchcodec``) uses FFmpeg's shared libraries from the system (``apt-get install ffmpeg``)
and must match torch's build (its PyPI wheels are built against CUDA torch; a CPU torch takes the wheel from
``download.pytorch.org/whl/cpu``).

The file is probed with PyAV first, so everything a file is refused for, and every limit (``max_pixels`` before a
frame is allocated, the aspect ratio, a lying duration), is ``VideoReader``'s, with its messages; torchcodec then
scans the packets (its exact mode) and decodes the frames on screen at the times asked for.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from ..errors import UserError
from .decode import _EPS, MAX_PIXELS, DecodeError, VideoReader, _cores, check_deadline, check_frame
from .transforms import short_side_size


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
    text = str(err)
    if "libav" in text or "FFmpeg" in text or "ffmpeg" in text:
        hint = "FFmpeg's shared libraries (4 to 7) were not found: apt-get install ffmpeg (Debian/Ubuntu)"
    else:
        hint = (
            f"torchcodec was built for another torch (this is {torch.__version__}): a CPU torch needs torchcodec from "
            "https://download.pytorch.org/whl/cpu, with FFmpeg from apt-get install ffmpeg"
        )
    return UserError(f"data.decoder: torchcodec can't load: {hint} ({type(err).__name__}: {text.splitlines()[0]})")


class TorchCodecReader(VideoReader):
    """``VideoReader``'s frames by time, decoded by torchcodec on ``device`` (``"cpu"``, or ``"cuda"``: NVDEC).

    The PyAV probe gives the metadata and the refusals; frames come from torchcodec's ``get_frames_played_at``, the
    frame on screen at each time, as ``VideoReader`` picks it. A file whose packets end before its header's duration,
    or whose data breaks mid-way, is partial: the times past what decoded are masked and ``partial`` says where it
    stopped. ``deadline`` is checked before and after each call into torchcodec (a call itself is not interrupted).
    ``short_side``: frames are scaled down after decoding (bilinear, antialiased), to ``VideoReader``'s size.
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
        decoder_class = _torchcodec()
        super().__init__(path, short_side=short_side, max_pixels=max_pixels, deadline=deadline)
        self.offset = float(self.start_pts * self.time_base)  # torchcodec's times are the stream's own
        self.container.close()
        self.container = self.stream = None
        self.frames_decoded = None  # torchcodec doesn't say
        try:
            self.decoder = decoder_class(
                str(self.path), seek_mode="exact", dimension_order="NCHW", num_ffmpeg_threads=_cores(), device=device
            )
            meta = self.decoder.metadata
            self.begin, self.end = meta.begin_stream_seconds - self.offset, meta.end_stream_seconds - self.offset
        except (RuntimeError, ValueError, IndexError, OSError) as err:
            self.decoder = None
            raise DecodeError(f"{self.path}: not a readable video ({type(err).__name__}: {err})") from None
        if not self.end > self.begin:
            self.close()
            raise DecodeError(f"{self.path}: no frame could be decoded")

    def close(self):
        self.decoder = None

    def frames_at(self, times) -> tuple[torch.Tensor, torch.Tensor]:
        """``VideoReader.frames_at``: ``(uint8 t c H W, bool t)`` for ``times`` in seconds, any order."""
        times = [float(s) for s in times]
        if not times:
            raise ValueError("frames_at needs at least one time")
        check_deadline(self.path, self.deadline)
        # as VideoReader: a time within _EPS of a frame's timestamp is that frame; before the first frame, the first;
        # past the last, the last (masked)
        last = self.end - _EPS
        wanted = [min(max(s + _EPS, self.begin), last) for s in times]
        try:
            video, end, error = self._decode(wanted), self.end, None
        except DecodeError:
            raise
        except (RuntimeError, ValueError, IndexError) as err:  # damaged data: what decodes before it stands
            video, end, error = self._decode_until_break(wanted, err)
        check_deadline(self.path, self.deadline)
        if error is not None or (self.length_known and end + 0.5 / self.fps < self.duration):
            self.partial = f"decoding stopped at {end:.2f} s of {self.duration:.2f} s" + (
                f" ({type(error).__name__}: {error})" if error is not None else ""
            )
        elif all(s < end for s in times):
            end = max(end, self.duration)  # as VideoReader: within the stream's length, nothing is masked
        valid = torch.tensor([s < end + _EPS for s in times])
        return video, valid

    def _decode(self, seconds: list[float]) -> torch.Tensor:
        """Frames on screen at ``seconds`` (within the stream): ``uint8 t c H W``, scaled to ``short_side``."""
        batch = self.decoder.get_frames_played_at([s + self.offset for s in seconds])
        return self._scaled(batch.data)

    def _decode_until_break(self, wanted: list[float], error: BaseException):
        """After a batch failed: the times in order, one at a time, up to the first that fails; the rest repeat the
        last frame that decoded. ``(frames, where decoding stopped, error)``; a ``DecodeError`` if none decoded."""
        order = sorted(range(len(wanted)), key=wanted.__getitem__)
        frames: list = [None] * len(wanted)
        last, end = None, self.begin
        for k in order:
            check_deadline(self.path, self.deadline)
            try:
                frame = self.decoder.get_frame_played_at(wanted[k] + self.offset)
            except (RuntimeError, ValueError, IndexError) as err:
                error = err
                break
            last, end = self._scaled(frame.data[None])[0], frame.pts_seconds - self.offset + frame.duration_seconds
            frames[k] = last
        if last is None:
            raise DecodeError(f"{self.path}: decoding failed ({type(error).__name__}: {error})")
        return torch.stack([f if f is not None else last for f in frames]), end, error

    def _scaled(self, video: torch.Tensor) -> torch.Tensor:
        """``uint8 t c H W`` with the short side scaled down to ``short_side`` (never up), after ``check_frame``."""
        height, width = video.shape[-2:]
        check_frame(self.path, width, height, self.max_pixels)
        if self.short_side is None or min(height, width) <= self.short_side:
            return video
        size = short_side_size(height, width, self.short_side)
        scaled = F.interpolate(video.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        return scaled.round_().clamp_(0, 255).to(torch.uint8)
