"""A preview of labelled clips: a PNG grid (a row per clip, a column per frame) or an animated GIF (all clips
side by side, a GIF frame per video frame). Pillow only; written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UserError

_LABEL_WIDTH = 120  # pixels left of each PNG row, or below each GIF tile, for the clip's name
_LABEL_HEIGHT = 14


def write_preview(
    clips: list[tuple[str, torch.Tensor]],
    out: str | os.PathLike,
    *,
    scale: int = 4,
    columns: int = 4,
    frame_ms: int = 250,
) -> Path:
    """Write ``clips`` (``(name, uint8 t 3 H W)``, all of one shape) to ``out``: ``.png`` or ``.gif``.

    Each pixel becomes a ``scale x scale`` block (nearest neighbour: what the model sees, unsmoothed).
    """
    out = Path(out)
    kind = out.suffix.lower()
    if kind not in (".png", ".gif"):
        raise UserError(f"preview file must end in .png or .gif; got {out.name!r}")
    if not clips:
        raise ValueError("preview: no clips to show")
    shapes = {tuple(video.shape) for _, video in clips}
    dtypes = {video.dtype for _, video in clips}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4 or next(iter(shapes))[1] != 3 or dtypes != {torch.uint8}:
        raise ValueError(
            f"preview: clips must all be uint8 t 3 H W of one shape; got shapes {sorted(shapes)}, "
            f"dtypes {sorted(map(str, dtypes))}"
        )
    tiles = [(name, _upscale(video, scale)) for name, video in clips]  # t H' W' 3 uint8
    if kind == ".png":
        images = [_png_grid(tiles)]
    else:
        images = [_gif_frame(tiles, t, columns) for t in range(tiles[0][1].shape[0])]
    from ..files import write_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == ".png":
        write_atomic(out, lambda tmp: images[0].save(tmp, format="PNG"))
    else:
        write_atomic(
            out,
            lambda tmp: images[0].save(
                tmp, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0
            ),
        )
    return out


def preview_synthetic(
    out: str | os.PathLike, *, num_frames: int = 8, size: int = 32, seed: int = 0, split: str = "train"
) -> Path:
    """One ``SyntheticMotion`` clip of ``split`` per class, written by :func:`write_preview` (``.png`` or ``.gif``)."""
    from ..data.synthetic import CLASSES, SyntheticMotion

    data = SyntheticMotion(len(CLASSES), num_frames=num_frames, size=size, seed=seed, split=split)  # i has class i
    clips = [data.clip(i) for i in range(len(data))]
    return write_preview([(data.classes[label], video) for video, label in clips], out)


def _upscale(video: torch.Tensor, scale: int) -> torch.Tensor:
    """``uint8 t 3 H W`` -> ``uint8 t (H*scale) (W*scale) 3``."""
    video = video.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return video.permute(0, 2, 3, 1).contiguous()


def _png_grid(tiles):
    from PIL import Image, ImageDraw

    t, h, w, _ = tiles[0][1].shape
    gap = 2
    image = Image.new("RGB", (_LABEL_WIDTH + t * (w + gap), len(tiles) * (h + gap)), "white")
    draw = ImageDraw.Draw(image)
    for row, (name, video) in enumerate(tiles):
        y = row * (h + gap)
        draw.text((4, y + h // 2 - 6), name, fill="black")
        for frame in range(t):
            image.paste(Image.fromarray(video[frame].numpy()), (_LABEL_WIDTH + frame * (w + gap), y))
    return image


def _gif_frame(tiles, t: int, columns: int):
    from PIL import Image, ImageDraw

    _, h, w, _ = tiles[0][1].shape
    gap, rows = 4, -(-len(tiles) // columns)
    image = Image.new("RGB", (columns * (w + gap), rows * (h + _LABEL_HEIGHT + gap)), "white")
    draw = ImageDraw.Draw(image)
    for i, (name, video) in enumerate(tiles):
        x, y = (i % columns) * (w + gap), (i // columns) * (h + _LABEL_HEIGHT + gap)
        image.paste(Image.fromarray(video[t].numpy()), (x, y))
        draw.text((x + 2, y + h + 1), name, fill="black")
    return image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
