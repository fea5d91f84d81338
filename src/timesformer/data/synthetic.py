"""SyntheticMotion: a dataset whose classes can only be told apart by the order of frames.

Clips of a shape on a textured, noisy background. Ten motion classes come in time-reversed pairs -- moving
left/right, up/down, rotating clockwise/counter-clockwise, growing/shrinking, appearing/disappearing -- and two
classes are still shapes (a disc, a cross). Sample ``i`` of the second class of a pair is *exactly* the time
reversal of the matching sample of the first class (same seed), so a pair has identical single frames and
identical unordered sets of frames: a model that ignores frame order (space-only attention) can't beat chance on
them, while a space-time model can. That is the paper's central claim (SSv2: space-only 36.6 vs divided 59.5) in
miniature.

Six more motions, ``TRANSFER_CLASSES`` (a diagonal move, a zig-zag, an orbit, each with its reversal), are a
task a pretrained model has never seen: ``classes=TRANSFER_CLASSES``.

Legend: ``t c S S`` frames x RGB x pixels (uint8 from ``clip``, normalised float from ``__getitem__``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import UserError
from .transforms import normalize

CLASSES = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "rotate_cw",
    "rotate_ccw",
    "grow",
    "shrink",
    "appear",
    "disappear",
    "still_disc",
    "still_cross",
)
REVERSED_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))  # (canonical, its time reversal)
# New motions for transfer (``demo --transfer``): never among the 12 a model pretrains on, three reversed pairs
TRANSFER_CLASSES = ("move_diagonal", "move_diagonal_back", "zigzag_right", "zigzag_left", "orbit_cw", "orbit_ccw")
ALL_CLASSES = CLASSES + TRANSFER_CLASSES
ALL_PAIRS = REVERSED_PAIRS + ((12, 13), (14, 15), (16, 17))
_SPLIT_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}


def _shape_alpha(kind: str, xx, yy, cx, cy, r, angle):
    """Anti-aliased coverage of a shape: ``xx, yy: S S``; parameters ``t`` -> ``t S S`` in [0, 1]."""
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    r = r[:, None, None]
    if kind == "disc":
        dist = torch.sqrt(u**2 + v**2) - r
    elif kind == "square":
        dist = torch.maximum(u.abs(), v.abs()) - r * 0.85
    elif kind == "triangle":  # equilateral, circumradius r
        k = math.sqrt(3.0)
        dist = torch.maximum(torch.maximum(k / 2 * u + v / 2, -k / 2 * u + v / 2), -v) - r / 2
    elif kind == "cross":  # a plus sign: tells itself from a disc in any single frame
        dist = torch.minimum(
            torch.maximum(u.abs() - r, v.abs() - r * 0.3), torch.maximum(v.abs() - r, u.abs() - r * 0.3)
        )
    elif kind == "bar":  # a long bar with a knob at one end: its orientation is unique over 360 degrees
        bar = torch.maximum(u.abs() - r, v.abs() - r * 0.2)
        knob = torch.sqrt((u - r) ** 2 + v**2) - r * 0.38
        dist = torch.minimum(bar, knob)
    else:
        raise ValueError(kind)
    return (0.5 - dist).clamp(0, 1)


class SyntheticMotion(Dataset):
    """Deterministic by ``seed`` and ``split``; generated on the fly.

    Args:
        num_samples: clips in the split (classes cycle: sample ``i`` has class ``i % 12``).
        num_frames, size: clip length and side in pixels.
        classes: a subset of ``CLASSES`` or ``TRANSFER_CLASSES`` by name (pairs stay pairs only if both are kept).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        num_frames: int = 8,
        size: int = 32,
        seed: int = 0,
        split: str = "train",
        classes: tuple[str, ...] = CLASSES,
        mean=(0.45, 0.45, 0.45),
        std=(0.225, 0.225, 0.225),
    ):
        unknown = [c for c in classes if c not in ALL_CLASSES]
        if unknown:
            raise UserError(f"unknown SyntheticMotion class(es) {unknown}; known: {ALL_CLASSES}")
        if split not in _SPLIT_OFFSET:
            raise UserError(f"split must be one of {tuple(_SPLIT_OFFSET)}; got {split!r}")
        if num_frames < 2 or size < 16:
            raise UserError(f"need num_frames >= 2 and size >= 16; got {num_frames}, {size}")
        self.num_samples, self.num_frames, self.size = num_samples, num_frames, size
        self.seed, self.split, self.classes = seed, split, list(classes)
        self.mean, self.std = mean, std
        self.multi_label = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        video, label = self.clip(i)
        return {
            "video": normalize(video, self.mean, self.std),
            "mask": torch.ones(self.num_frames, dtype=torch.bool),
            "label": label,
            "index": i,
            "view": 0,
            "path": f"synthetic:{self.split}:{i}",
        }

    def clip(self, i: int) -> tuple[torch.Tensor, int]:
        """``(uint8 t 3 S S, label)`` of sample ``i``."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range for {self.num_samples}")
        label = i % self.num_classes
        name = self.classes[label]
        global_id = ALL_CLASSES.index(name)
        canonical, reverse = global_id, False
        for a, b in ALL_PAIRS:
            if global_id == b:
                canonical, reverse = a, True
        # the twin of a reversed class shares the seed of its canonical class: the same clip, reversed in time
        slot = i // self.num_classes
        g = torch.Generator().manual_seed(hash((self.seed, _SPLIT_OFFSET[self.split], slot, canonical)) & 0xFFFF_FFFF)
        video = self._render(ALL_CLASSES[canonical], g)
        return (video.flip(0) if reverse else video), label

    def _render(self, name: str, g: torch.Generator) -> torch.Tensor:
        T, S = self.num_frames, self.size
        rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
        ramp = torch.linspace(0, 1, T)
        # background: smooth random texture (static camera) plus per-frame sensor noise
        coarse = 40 + 100 * rand(1, 3, 5, 5)
        background = F.interpolate(coarse, size=(S, S), mode="bicubic", align_corners=False)[0].clamp(0, 255)
        color = 150 + 105 * rand(3)
        yy, xx = torch.meshgrid(
            torch.arange(S, dtype=torch.float32) + 0.5, torch.arange(S, dtype=torch.float32) + 0.5, indexing="ij"
        )
        kinds = ("disc", "square", "triangle")
        kind = kinds[int(torch.randint(0, 3, (1,), generator=g))]
        angle = torch.full((T,), float(rand(1)) * 2 * math.pi)
        r = torch.full((T,), S * (0.14 + 0.06 * float(rand(1))))
        cx = torch.full((T,), S * (0.3 + 0.4 * float(rand(1))))
        cy = torch.full((T,), S * (0.3 + 0.4 * float(rand(1))))
        alpha_scale = torch.ones(T)
        travel = S * (0.4 + 0.15 * float(rand(1)))  # large, clear motions
        if name == "move_left":
            start = S * 0.5 + travel / 2
            cx = start - travel * ramp
        elif name == "move_up":
            start = S * 0.5 + travel / 2
            cy = start - travel * ramp
        elif name == "rotate_cw":
            kind, r = "bar", torch.full((T,), S * (0.32 + 0.06 * float(rand(1))))
            cx, cy = torch.full((T,), S / 2), torch.full((T,), S / 2)
            angle = angle + ramp * math.radians(70 + 40 * float(rand(1)))  # y points down: increasing = clockwise
        elif name == "grow":
            r = S * (0.07 + 0.03 * float(rand(1))) + S * (0.22 + 0.06 * float(rand(1))) * ramp
        elif name == "appear":
            onset = float(rand(1)) * (T - 2) / T
            alpha_scale = ((ramp - onset) * T / 2).clamp(0, 1)
        elif name == "move_diagonal":  # top-left to bottom-right
            cx = S * 0.5 - travel / 2 + travel * ramp
            cy = S * 0.5 - travel / 2 + travel * ramp
        elif name == "zigzag_right":  # left to right, up and down twice on the way
            cx = S * 0.5 - travel / 2 + travel * ramp
            cy = S * 0.5 + S * 0.16 * (1 - 2 * (4 * ramp % 2 - 1).abs())
        elif name == "orbit_cw":  # a circle around the centre, two thirds of a turn
            theta = float(rand(1)) * 2 * math.pi + ramp * math.radians(240)
            cx, cy = S / 2 + S * 0.28 * torch.cos(theta), S / 2 + S * 0.28 * torch.sin(theta)
        elif name in ("still_disc", "still_cross"):  # large shapes: the class is in every single frame
            kind = "disc" if name == "still_disc" else "cross"
            r = torch.full((T,), S * (0.24 + 0.06 * float(rand(1))))
        else:
            raise ValueError(name)
        alpha = _shape_alpha(kind, xx, yy, cx, cy, r, angle) * alpha_scale[:, None, None]  # t S S
        frames = background[None] * (1 - alpha[:, None]) + color[None, :, None, None] * alpha[:, None]
        frames = frames + 8.0 * torch.randn(T, 3, S, S, generator=g)
        return frames.round().clamp(0, 255).to(torch.uint8)


def write_synthetic(
    out: str | os.PathLike,
    num: int,
    *,
    split: str = "train",
    seed: int = 0,
    num_frames: int = 8,
    size: int = 32,
    fps: int = 8,
    progress=None,
) -> Path:
    """Write ``num`` clips as H.264 mp4 files in the ``VideoFolder`` layout ``out/<split>/<class>/<i>.mp4``.

    Each file is written to a temporary name and renamed, so an interrupted run leaves no half-written video.
    """
    import av

    data = SyntheticMotion(num, num_frames=num_frames, size=size, seed=seed, split=split)
    root = Path(out) / split
    for name in data.classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(num):
        video, label = data.clip(i)
        path = root / data.classes[label] / f"{i:06d}.mp4"
        tmp = path.with_name(f".{path.name}.tmp.mp4")
        with av.open(str(tmp), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
            stream.options = {"crf": "10", "preset": "veryfast"}
            for frame in video.permute(0, 2, 3, 1).numpy():
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        os.replace(tmp, path)
        if progress is not None:
            progress(i + 1)
    return root
