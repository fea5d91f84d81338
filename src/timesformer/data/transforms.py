"""Spatial transforms on ``t c H W`` clips: the pure functions the test views are made of, and ``EvalTransform``
(training augmentation, on Kornia: ``augment.py``).

Input frames are uint8; every output is float. Normalisation maps ``[0, 255]`` to ``(x / 255 - mean) / std``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OFFICIAL_MEAN, OFFICIAL_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)  # PySlowFast / TimeSformer defaults


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(height, width)`` scaled so the shorter side is ``size``, the other rounded (at least 1)."""
    scale = size / min(height, width)
    return (size, max(round(width * scale), 1)) if height <= width else (max(round(height * scale), 1), size)


def resize_short_side(video: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize so the shorter side is ``size``: ``t c H W -> t c H' W'`` float."""
    h, w = video.shape[-2:]
    if min(h, w) == size:
        return video.float()
    new = short_side_size(h, w, size)
    return F.interpolate(video.float(), size=new, mode="bilinear", align_corners=False, antialias=True)


def crop(video: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    h, w = video.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop of {size} px needs frames at least that large; got {h}x{w}")
    return video[..., top : top + size, left : left + size]


def center_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    h, w = video.shape[-2:]
    return crop(video, (h - size) // 2, (w - size) // 2, size)


def three_crop(video: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Three ``size`` crops along the longer side: left/centre/right (top/centre/bottom for portrait), the
    paper's test protocol (PySlowFast ``spatial_idx`` 0, 1, 2)."""
    h, w = video.shape[-2:]
    if w >= h:
        return [crop(video, (h - size) // 2, left, size) for left in (0, (w - size) // 2, w - size)]
    return [crop(video, top, (w - size) // 2, size) for top in (0, (h - size) // 2, h - size)]


def normalize(video: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (video.float() / 255.0 - mean) / std


class EvalTransform:
    """Test views: short side to ``short_side`` (default ``crop_size``, the official test protocol), then one
    centre crop or three crops. ``__call__(uint8 t c H W) -> list of float t c S S``."""

    def __init__(
        self, *, crop_size: int, short_side: int | None = None, num_crops: int = 1, mean=OFFICIAL_MEAN, std=OFFICIAL_STD
    ):
        if num_crops not in (1, 3):
            raise UserError(f"num_crops must be 1 or 3; got {num_crops}")
        self.crop_size, self.short_side, self.num_crops = crop_size, short_side or crop_size, num_crops
        self.mean, self.std = mean, std

    def __call__(self, video: torch.Tensor) -> list[torch.Tensor]:
        return [self.view(video, i) for i in range(self.num_crops)]

    def view(self, video: torch.Tensor, crop_index: int) -> torch.Tensor:
        """Only the ``crop_index``-th view (datasets serve one view per item)."""
        video = resize_short_side(video, self.short_side)
        view = (
            three_crop(video, self.crop_size)[crop_index] if self.num_crops == 3 else center_crop(video, self.crop_size)
        )
        return normalize(view, self.mean, self.std)
