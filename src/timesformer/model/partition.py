"""How each attention scheme splits the patch tokens of a clip into groups that attend among themselves.

Legend: ``b t h w`` batch x frames x patch grid, ``c`` channels, ``G`` groups per clip, ``L`` tokens per group.
A partition maps ``b t h w c -> (b G) L c`` and back. Sizes always come from the input tensor.
"""

from __future__ import annotations

import functools
import math

import torch
from einops import rearrange


class Partition:
    """Base: ``spans_time`` says whether a group holds tokens of several frames (then padded frames must be
    masked as keys); ``axes`` names the coordinates that vary inside a group (for rotary embeddings)."""

    spans_time: bool
    axes: str

    def group(self, x: torch.Tensor) -> torch.Tensor:  # b t h w c -> (b G) L c
        raise NotImplementedError

    def ungroup(
        self, y: torch.Tensor, size: tuple[int, int, int, int]
    ) -> torch.Tensor:  # (b G) L c -> b t h w c (contiguous)
        raise NotImplementedError

    def slot_valid(self, t: int, h: int, w: int, device) -> torch.Tensor | None:
        """``G L`` bool, False on padding slots of unequal groups; None when all groups are full."""
        return None

    def real_slots(self, valid: torch.Tensor | None, size: tuple[int, int, int, int], device) -> torch.Tensor | None:
        """``(b G) L`` bool: the slots that hold a token of a real frame (``valid: b t``), or None when all do."""
        b, t, h, w = size
        real = None
        if valid is not None:
            real = self.group(valid[:, :, None, None, None].expand(b, t, h, w, 1)).squeeze(-1)
        slot = self.slot_valid(t, h, w, device)
        if slot is not None:
            real = slot.repeat(b, 1) if real is None else real & slot.repeat(b, 1)
        return real

    def num_groups(self, t: int, h: int, w: int) -> int:
        """``G``, the groups of one clip."""
        raise NotImplementedError

    def token_groups(self, t: int, h: int, w: int, device) -> torch.Tensor:
        """``t h w``: the group (``0..G-1``) each token of one clip belongs to; what a per-group draw (stochastic
        depth) needs to reach the tokens in their ``t h w`` places."""
        slots = self.group(torch.zeros(1, t, h, w, 1, device=device))  # G L 1
        G, L = slots.shape[:2]
        ids = torch.arange(G, device=device).view(G, 1, 1).expand(G, L, 1)
        return self.ungroup(ids, (1, t, h, w)).view(t, h, w)


class EinopsPartition(Partition):
    """Groups that are axes of the token grid, e.g. ``groups="(b h w)", seq="t"`` for temporal attention."""

    def __init__(self, groups: str, seq: str, *, spans_time: bool, axes: str):
        self.to_groups = f"b t h w c -> {groups} {seq} c"
        self.from_groups = f"{groups} {seq} c -> b t h w c"
        self.spans_time, self.axes = spans_time, axes
        self.group_axes = [axis for axis in "thw" if axis in groups]

    def num_groups(self, t, h, w):
        n = 1  # a plain loop: torch.compile traces it (a generator over a dict broke its graph here)
        for axis, size in zip("thw", (t, h, w)):
            if axis in self.group_axes:
                n *= size
        return n

    def group(self, x):
        return rearrange(x, self.to_groups)

    def ungroup(self, y, size):
        b, t, h, w = size
        # contiguous: the residual stream must stay dense, or every later norm and matmul pays a copy
        return rearrange(y, self.from_groups, b=b, t=t, h=h, w=w).contiguous()


def _group_index(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """From a group id per token (flattened ``t h w``) build the gather ``index: G L`` (padding slots point at
    a dummy token appended at position ``n``), its ``inverse: n`` into the flattened ``G*L`` slots, and the
    ``G L`` slot validity (None when all groups are full)."""
    _, ids_t = torch.unique(ids, return_inverse=True)  # renumber 0..G-1, dropping empty ids
    n = ids_t.numel()
    counts = torch.bincount(ids_t)
    G, L = counts.numel(), int(counts.max())
    order = torch.argsort(ids_t, stable=True)
    gid = ids_t[order]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[gid]
    index = torch.full((G, L), n, dtype=torch.long)
    index[gid, rank] = order
    inverse = torch.empty(n, dtype=torch.long)
    inverse[order] = gid * L + rank
    slot = None if bool((counts == L).all()) else index < n
    return index, inverse, slot


class IndexPartition(Partition):
    """Groups given by a group-id function of token coordinates; unequal groups are padded (and masked)."""

    def __init__(self, ids_fn, *, spans_time: bool, axes: str):
        self.ids_fn, self.spans_time, self.axes = ids_fn, spans_time, axes

    @functools.lru_cache(maxsize=32)  # noqa: B019 -- partitions live as long as the model, a few per block
    def _cpu_index(self, t: int, h: int, w: int):
        tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
        return _group_index(self.ids_fn(tt.flatten(), yy.flatten(), xx.flatten(), (t, h, w)))

    @functools.lru_cache(maxsize=32)  # noqa: B019 -- once per device: a copy each forward would wait for the GPU
    def _index(self, t, h, w, device):
        index, inverse, slot = self._cpu_index(t, h, w)
        return index.to(device), inverse.to(device), None if slot is None else slot.to(device)

    def group(self, x):
        b, t, h, w, c = x.shape
        index, _, slot = self._index(t, h, w, x.device)
        flat = x.reshape(b, t * h * w, c)
        if slot is not None:  # a dummy token for the padding slots
            flat = torch.cat([flat, flat.new_zeros(b, 1, c)], dim=1)
        return flat[:, index].flatten(0, 1)  # (b G) L c

    def ungroup(self, y, size):
        b, t, h, w = size
        _, inverse, _ = self._index(t, h, w, y.device)
        return y.reshape(b, -1, y.shape[-1])[:, inverse].reshape(b, t, h, w, -1)

    def slot_valid(self, t, h, w, device):
        return self._index(t, h, w, device)[2]

    def num_groups(self, t, h, w):
        return self._cpu_index(t, h, w)[0].shape[0]


def local_windows(windows: int) -> IndexPartition:
    """Sparse L+G, local step: each token attends to the ``F x H/windows x W/windows`` block of patches it
    lies in (all frames; non-overlapping windows of ``ceil(h/windows) x ceil(w/windows)`` patches)."""

    def ids(t, y, x, size):
        _, h, w = size
        wy, wx = math.ceil(h / windows), math.ceil(w / windows)
        return (y // wy) * windows + (x // wx)

    return IndexPartition(ids, spans_time=True, axes="tyx")


def global_stride(stride: int) -> IndexPartition:
    """Sparse L+G, global step: tokens attend to the whole clip at a stride of ``stride`` patches along time,
    height and width (tokens sharing ``(t % s, y % s, x % s)`` form one group; Child et al.'s strided pattern)."""

    def ids(t, y, x, size):
        return ((t % stride) * stride + y % stride) * stride + x % stride

    return IndexPartition(ids, spans_time=True, axes="tyx")


def stages_for(attention: str, *, sparse_windows: int = 2, sparse_stride: int = 2):
    """``(pre_stages, final_stage)`` of a block for each scheme of the paper's Table 1; each stage is a
    ``(name, Partition)``. The final stage is the one the cls token joins."""
    temporal = EinopsPartition("(b h w)", "t", spans_time=True, axes="t")
    spatial = EinopsPartition("(b t)", "(h w)", spans_time=False, axes="yx")
    schemes = {
        "space": ((), ("spatial", spatial)),
        "joint": ((), ("joint", EinopsPartition("b", "(t h w)", spans_time=True, axes="tyx"))),
        "divided": ((("temporal", temporal),), ("spatial", spatial)),
        "sparse": ((("local", local_windows(sparse_windows)),), ("global", global_stride(sparse_stride))),
        "axial": (
            (("temporal", temporal), ("width", EinopsPartition("(b t h)", "w", spans_time=False, axes="x"))),
            ("height", EinopsPartition("(b t w)", "h", spans_time=False, axes="y")),
        ),
    }
    return schemes[attention]
