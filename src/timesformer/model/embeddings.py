"""Patch embedding, learned position/time embeddings and their resampling, rotary embeddings.

Legend: ``b t c H W`` pixels, ``h w`` patch grid, ``n = h*w``, ``d`` model dim, ``e`` head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class PatchEmbed(nn.Module):
    """Per-frame ``Conv2d(c, d, p, stride=p)``: ``b t c H W -> b t h w d`` (official ``patch_embed.proj``)."""

    def __init__(self, *, channels: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b = video.shape[0]
        x = self.proj(video.flatten(0, 1))  # (b t) d h w
        # dense channels-last: the residual stream inherits this layout, and a permuted view here would make every
        # later norm, matmul and activation copy its input
        return rearrange(x, "(b t) d h w -> b t h w d", b=b).contiguous()


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a learned ``1 (1+n) d`` table (cls first, square grid) to ``grid = (h, w)``.

    Nearest-neighbour 2-D interpolation over the patch grid, as the official model and Hugging Face do
    at run time (``F.interpolate(mode="nearest")``), so resized models match theirs exactly.
    """
    n = pos_embed.shape[1] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"pos_embed must hold 1 + a square number of positions; got {tuple(pos_embed.shape)}")
    if (side, side) == tuple(grid):
        return pos_embed
    cls_pos, grid_pos = pos_embed[:, :1], pos_embed[:, 1:]
    grid_pos = rearrange(grid_pos, "1 (h w) d -> 1 d h w", h=side)
    grid_pos = F.interpolate(grid_pos, size=tuple(grid), mode="nearest")
    return torch.cat([cls_pos, rearrange(grid_pos, "1 d h w -> 1 (h w) d")], dim=1)


def resample_time_embed(time_embed: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Resize a learned ``1 T d`` time table to ``num_frames`` by 1-D nearest interpolation (official, HF)."""
    if time_embed.shape[1] == num_frames:
        return time_embed
    out = F.interpolate(time_embed.transpose(1, 2), size=num_frames, mode="nearest")
    return out.transpose(1, 2)


def resample_joint_pos_embed(pos_embed: torch.Tensor, num_frames: int, size: tuple[int, int, int]) -> torch.Tensor:
    """Resize the seed's joint table ``1 (1 + T*g*g) d`` (cls first, then frame-major ``t h w``) to
    ``size = (t, h, w)`` by nearest interpolation over time and both grid axes.

    The seed itself slices the first ``1 + t*h*w`` rows, which scrambles positions at any other size.
    """
    n = (pos_embed.shape[1] - 1) // num_frames
    side = math.isqrt(n)
    if side * side * num_frames + 1 != pos_embed.shape[1]:
        raise ValueError(
            f"joint pos_embed must hold 1 + {num_frames} frames x a square grid; got {tuple(pos_embed.shape)}"
        )
    if (num_frames, side, side) == tuple(size):
        return pos_embed
    grid = rearrange(pos_embed[:, 1:], "1 (t h w) d -> 1 d t h w", t=num_frames, h=side)
    grid = F.interpolate(grid, size=tuple(size), mode="nearest")
    return torch.cat([pos_embed[:, :1], rearrange(grid, "1 d t h w -> 1 (t h w) d")], dim=1)


# --- rotary -----------------------------------------------------------------------------------------
# A true rotation: head dims are taken in pairs (i, i + e/2) ("half-split" layout); pair i turns by the
# angle pos * theta_i. With several axes the pairs are shared out between them (axial rotary), each axis
# with its own frequency ladder theta_i = base^(-i / pairs_of_that_axis). Then
#   <rot(q, p), rot(k, p')> depends on p - p' only, per axis (tested in tests/model/test_rotary.py).
# The seed builds its temporal frequencies half-split but rotates interleaved pairs, which is no rotation.

AXES = {"t": 0, "y": 1, "x": 2}


def rotary_angles(
    axes: str, sizes: tuple[int, int, int], dim_head: int, *, base: float = 10000.0, device=None
) -> torch.Tensor:
    """Angles ``t h w (e/2)`` for the axes named in ``axes`` (a subset of ``"tyx"``).

    Args:
        axes: which coordinates rotate, e.g. ``"t"`` (temporal attention), ``"yx"`` (spatial), ``"tyx"``.
        sizes: ``(t, h, w)`` of the token grid; positions are integer indices 0..size-1.
        dim_head: ``e``; must be even.
    """
    if dim_head % 2:
        raise ValueError(f"rotary embeddings need an even dim_head; got {dim_head}")
    pairs = dim_head // 2
    shares = [pairs // len(axes) + (i < pairs % len(axes)) for i in range(len(axes))]
    grids = torch.meshgrid(*(torch.arange(s, device=device, dtype=torch.float32) for s in sizes), indexing="ij")
    chunks = []
    for axis, share in zip(axes, shares):
        theta = base ** (-torch.arange(share, device=device, dtype=torch.float32) / max(share, 1))
        chunks.append(grids[AXES[axis]].unsqueeze(-1) * theta)
    return torch.cat(chunks, dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(x[..., i], x[..., i + e/2])`` by the angle whose cos/sin are given; ``cos, sin``
    broadcast against ``x[..., :e/2]`` (e.g. ``x: b t h w k e`` with ``cos: t h w 1 (e/2)``)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rotate_qk(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    """``apply_rotary`` on the queries and keys of a fused projection, values passed through:
    ``qkv: ... (3 k e) -> ... (3 k e)``, with ``cos, sin`` broadcasting against ``... 1 (e/2)`` (e.g.
    ``t h w 1 (e/2)`` for ``qkv: b t h w (3 k e)``). The result is in the promoted dtype of ``qkv`` and ``cos``.

    In eager training, queries and keys turn together, in fewer passes over memory, as ``x cos' + swap(x) sin'``
    (``cos' = [cos, cos]``, ``sin' = [-sin, sin]``, ``swap`` exchanging the two halves): one autograd function whose
    backward is the inverse rotation and keeps no activation, 2.5x faster forward and backward than
    ``apply_rotary`` on the demo's shapes. Everything else (inference, tracing, compiling, exporting, tables that
    need a gradient, higher-order gradients) runs ``apply_rotary`` itself.
    """
    if (
        qkv.requires_grad
        and torch.is_grad_enabled()
        and not (cos.requires_grad or sin.requires_grad)
        and not _tracing()
    ):
        return _RotateQK.apply(qkv, cos, sin, heads)
    return _rotated(qkv, cos, sin, heads)


def _tracing() -> bool:
    """Under torch.compile, torch.export (and so PT2E quantization, OpenVINO and ONNX export) or TorchScript tracing:
    graphs take plain ops (an ``out=`` write into a fresh ``empty`` is no graph an exporter can be trusted with)."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.compiler.is_compiling() or exporting() or torch.jit.is_tracing()


def _rotated(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    """``rotate_qk`` in plain differentiable ops: ``apply_rotary`` on q and k, the graph exporters were tested with
    (OpenVINO pattern-matches it; a fused form of the same arithmetic came out of its conversion with NaNs)."""
    q, k, v = qkv.unflatten(-1, (3, heads, -1)).unbind(-3)
    return torch.stack([apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v], dim=-3).flatten(-3)


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [x2, x1]`` along the last dim (a copy)."""
    return x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)


def _rotate_into(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, dtype) -> torch.Tensor:
    """``rotate_qk`` without autograd, written into one new tensor: ``... (3 k e)`` in ``dtype``."""
    cos2 = torch.cat([cos, cos], dim=-1).unsqueeze(-3)  # ... 1 1 e: broadcasts over (2) k
    sin2 = torch.cat([-sin, sin], dim=-1).unsqueeze(-3)
    x = x.unflatten(-1, (3, heads, -1))
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    qk, out_qk = x[..., :2, :, :], out[..., :2, :, :]
    torch.mul(qk, cos2, out=out_qk)
    out_qk.addcmul_(_swap_halves(qk), sin2)
    out[..., 2:, :, :].copy_(x[..., 2:, :, :])
    return out.flatten(-3)


class _RotateQK(torch.autograd.Function):
    @staticmethod
    def forward(qkv, cos, sin, heads):
        return _rotate_into(qkv, cos, sin, heads, torch.result_type(qkv, cos))

    @staticmethod
    def setup_context(ctx, inputs, output):  # apart from forward: torch.func's transforms need it so
        qkv, cos, sin, heads = inputs
        ctx.save_for_backward(cos, sin)
        ctx.heads, ctx.dtype = heads, qkv.dtype

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors  # a rotation's inverse is its transpose: turn back by the same angle
        if torch.is_grad_enabled():  # create_graph: a backward that is itself differentiable
            return _rotated(grad, cos, -sin, ctx.heads).to(ctx.dtype), None, None, None
        return _rotate_into(grad.contiguous(), cos, -sin, ctx.heads, ctx.dtype), None, None, None
