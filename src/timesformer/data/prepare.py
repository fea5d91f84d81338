"""``timesformer prepare``: re-encode a dataset once for training -- a smaller short side and a short keyframe
interval -- so that every later epoch decodes a fraction of the pixels and seeks to a keyframe nearby.

``prepare_videos(src, out)`` takes a folder (any tree of videos and frame folders, its layout kept) or a list file
(its lines rewritten beside the videos, same labels). Each file is decoded with the training reader's limits
(``max_pixels``), scaled by libswscale to ``short_side`` (never up), and encoded to H.264 (``gop`` frames between
keyframes, yuv420p, no audio) at its own timestamps, or at ``fps`` where given. Each output is written to a
temporary name and renamed: a rerun after a kill skips what is done and redoes the file that was cut. A file that
can't be read is listed with its reason in ``prepare-report*.json`` and never stops the job; one that breaks
part-way is kept up to the break and reported as partial. ``shard=(i, n)`` does every n-th file from the i-th
(torchrun's rank and world size by default), ``workers`` processes encode in parallel.
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

from ..errors import UserError
from .decode import IMAGE_EXTENSIONS, MAX_PIXELS, VIDEO_EXTENSIONS, DecodeError, natural_key
from .readers import open_video
from .transforms import short_side_size

SETTINGS_FILE = "prepare.json"


@dataclass(frozen=True)
class Settings:
    """What a prepared folder was made with: a rerun with others is refused (it would mix two encodings)."""

    short_side: int = 320
    fps: float | None = None
    gop: int = 16
    codec: str = "libx264"
    crf: int = 23
    preset: str = "veryfast"
    max_pixels: int = MAX_PIXELS


def find_videos(src: Path, root: Path | None = None) -> tuple[list[tuple[Path, str]], list[str] | None]:
    """``([(source path, output name relative to out)], list lines or None)``: every video under a folder, or the
    videos a list file names (then the list's own lines, to rewrite)."""
    if src.is_dir():
        found = []
        for path in sorted(src.rglob("*"), key=lambda p: natural_key(str(p))):
            frames = path.is_dir() and any(q.suffix.lower() in IMAGE_EXTENSIONS for q in path.iterdir())
            if frames or (path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS):
                found.append((path, str(path.relative_to(src).with_suffix(".mp4"))))
        if not found:
            raise UserError(f"{src}: no videos found (expected files ending in {', '.join(VIDEO_EXTENSIONS)})")
        return found, None
    if not src.is_file():
        raise UserError(f"{src}: no such folder or list file")
    from .datasets import list_videos

    base = Path(root) if root is not None else src.parent
    entries = list_videos(src, root)
    videos = []
    for path, _ in entries:
        try:
            rel = path.relative_to(base)
        except ValueError:
            raise UserError(f"{src}: {path} is outside the list's root {base}; pass --root") from None
        videos.append((path, str(rel.with_suffix(".mp4"))))
    return videos, src.read_text().splitlines()


def output_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(height, width)`` with the short side at most ``short_side`` (never scaled up), both even (yuv420p)."""
    if min(height, width) > short_side:
        height, width = short_side_size(height, width, short_side)
    return max(height - height % 2, 2), max(width - width % 2, 2)


def prepare_file(src: str, dst: str, settings: Settings) -> dict:
    """Re-encode one video (``settings``) to ``dst`` through a temporary file; returns ``{"status": "ok" |
    "partial" | "bad", "reason", "seconds", "bytes"}``. Never raises for a bad file."""
    import av

    started, tmp = time.perf_counter(), Path(dst).with_name(f".{Path(dst).name}.tmp.mp4")
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    frames = 0
    try:
        with open_video(src, max_pixels=settings.max_pixels) as reader, av.open(str(tmp), "w") as out:
            rate = Fraction(settings.fps or reader.fps).limit_denominator(1001)
            stream = out.add_stream(settings.codec, rate=rate)
            stream.codec_context.gop_size = settings.gop
            stream.options = {"crf": str(settings.crf), "preset": settings.preset}
            stream.pix_fmt, time_base = "yuv420p", Fraction(1, 90_000)
            stream.codec_context.time_base = time_base
            next_tick = 0.0  # with fps: the next output time a frame is due at
            for frame, seconds in _decoded(reader):
                if frames == 0:
                    stream.height, stream.width = output_size(frame.height, frame.width, settings.short_side)
                if settings.fps:  # on the output's ticks: a frame whose tick is taken is dropped
                    tick = round(seconds * settings.fps) / settings.fps
                    if tick < next_tick:
                        continue
                    seconds, next_tick = tick, tick + 1 / settings.fps
                small = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
                small.pts, small.time_base = round(seconds / time_base), time_base
                out.mux(stream.encode(small))
                frames += 1
            if frames == 0:
                raise DecodeError(f"{src}: no frame decodes")
            out.mux(stream.encode())
            partial = reader.partial
        os.replace(tmp, dst)
    except (DecodeError, av.FFmpegError, OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        return {"status": "bad", "reason": str(err).removeprefix(f"{src}: "), "seconds": time.perf_counter() - started}
    result = {"status": "partial" if partial else "ok", "seconds": time.perf_counter() - started}
    result.update(bytes=os.path.getsize(dst), frames=frames)
    return {**result, "reason": partial} if partial else result


def _decoded(reader):
    """``(frame, seconds)`` of every frame a reader's file holds in display order; a break part-way ends it (the
    reader's ``partial`` says where)."""
    import av

    if not hasattr(reader, "container"):  # a folder of frames
        from PIL import Image

        for i, path in enumerate(reader.files):
            with Image.open(path) as image:
                yield av.VideoFrame.from_image(image.convert("RGB")), i / reader.fps
        return
    last = 0.0
    try:
        for packet in reader.container.demux(reader.stream):
            for frame in packet.decode():
                last = reader._time(frame)
                yield frame, last
    except av.FFmpegError as err:
        reader.partial = f"decoding stopped at {last:.2f} s: {err}"
        return
    end = last + 1 / reader.fps  # the data ran out before the duration the header declares: cut short
    if reader.length_known and end + 0.5 / reader.fps < reader.duration:
        reader.partial = f"decoding stopped at {end:.2f} s of {reader.duration:.2f} s"


def prepare_videos(
    src,
    out,
    *,
    settings: Settings = Settings(),
    root=None,
    workers: int = 0,
    shard: tuple[int, int] | None = None,
    progress=None,
) -> dict:
    """Prepare every video of ``src`` (a folder or a list file) into ``out``; returns the report (also written as
    ``prepare-report[-i-of-n].json``): ``done`` / ``skipped`` / ``partial`` / ``bad`` (path -> reason), bytes in and
    out, seconds. ``progress(done, total)`` as files finish."""
    src, out = Path(src), Path(out)
    videos, lines = find_videos(src, root)
    if shard is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: a shard per process
        shard = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    index, count = shard or (0, 1)
    if not 0 <= index < count:
        raise UserError(f"shard {index}/{count}: expected 0 <= i < N")
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out / SETTINGS_FILE, settings)
    if lines is not None and index == 0:  # the list, beside the videos, naming the prepared files
        _write_list(out / src.name, lines, src, root)
    mine = videos[index::count]
    todo = [(str(s), str(out / rel)) for s, rel in mine if not (out / rel).exists()]
    report = {"done": [], "skipped": len(mine) - len(todo), "partial": {}, "bad": {}, "bytes_in": 0, "bytes_out": 0}
    started = time.perf_counter()
    results = _run(todo, settings, workers)
    for n, ((source, dst), result) in enumerate(zip(todo, results), start=1):
        if result["status"] == "bad":
            report["bad"][source] = result["reason"]
        else:
            report["done"].append(dst)
            report["bytes_in"] += _size(source)
            report["bytes_out"] += result["bytes"]
            if result["status"] == "partial":
                report["partial"][source] = result["reason"]
        if progress:
            progress(n, len(todo))
    report["seconds"] = round(time.perf_counter() - started, 3)
    name = "prepare-report.json" if count == 1 else f"prepare-report-{index}-of-{count}.json"
    from ..files import write_json_atomic

    write_json_atomic(out / name, report)
    return report


def estimate(src, *, settings: Settings = Settings(), root=None, sample: int = 3) -> dict:
    """``--dry-run``: prepare up to ``sample`` files (evenly spread) into a temporary folder, and scale their output
    bytes and seconds by the input's size: ``{"videos", "bytes_in", "bytes_out", "seconds"}`` (estimated)."""
    import tempfile

    videos, _ = find_videos(Path(src), root)
    picked = videos[:: max(len(videos) // sample, 1)][:sample]
    total_in = sum(_size(str(p)) for p, _ in videos if Path(p).exists())
    sampled_in = sampled_out = seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (path, _) in enumerate(picked):
            result = prepare_file(str(path), str(Path(tmp) / f"{i}.mp4"), settings)
            if result["status"] != "bad":
                sampled_in, sampled_out = sampled_in + _size(str(path)), sampled_out + result["bytes"]
                seconds += result["seconds"]
    scale = total_in / sampled_in if sampled_in else 0.0
    return {"videos": len(videos), "bytes_in": total_in, "bytes_out": sampled_out * scale, "seconds": seconds * scale}


def _run(todo: list, settings: Settings, workers: int):
    if workers <= 1:
        yield from (prepare_file(s, d, settings) for s, d in todo)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(prepare_file, [s for s, _ in todo], [d for _, d in todo], [settings] * len(todo))


def _size(path: str) -> int:
    p = Path(path)
    return sum(f.stat().st_size for f in p.iterdir()) if p.is_dir() else p.stat().st_size


def _check_settings(path: Path, settings: Settings) -> None:
    """The first run records its settings; a later one must use the same."""
    from ..files import write_json_atomic

    mine = asdict(settings)
    if path.exists():
        theirs = json.loads(path.read_text())
        diff = [k for k in mine if theirs.get(k) != mine[k]]
        if diff:
            raise UserError(
                f"{path.parent} was prepared with {diff[0]}={theirs.get(diff[0])!r}; this run asks for "
                f"{mine[diff[0]]!r} (use another --out, or the same settings to continue it)"
            )
        return
    write_json_atomic(path, mine)


def _write_list(path: Path, lines: list[str], src: Path, root) -> None:
    """The source list's lines with each video's name ending in ``.mp4`` (the prepared file's name)."""
    from ..files import write_text_atomic

    ending = "|".join(e.lstrip(".") for e in VIDEO_EXTENSIONS)
    pattern = re.compile(rf"\.(?:{ending})(?=[ ,\t]|$)", re.IGNORECASE)
    write_text_atomic(path, "\n".join(pattern.sub(".mp4", line, count=1) for line in lines) + "\n")
