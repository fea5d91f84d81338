"""Feed-forward and stochastic depth. Legend: ``d`` model dim."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in force for ``device_type``, or None."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device argument
        enabled = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(a), weight, bias)`` that keeps only ``a`` for the backward pass and recomputes the GELU
    there: autograd would keep both ``a`` (for GELU) and ``gelu(a)`` (for the matmul) -- the two largest
    activations of a transformer block. Honours autocast like ``F.linear``."""

    @staticmethod
    def forward(ctx, a, weight, bias):
        dtype = _autocast_dtype(a.device.type)
        ctx.dtypes = (a.dtype, weight.dtype, bias.dtype)
        if dtype is not None:
            a, weight, bias = a.to(dtype), weight.to(dtype), bias.to(dtype)
        with torch.autocast(a.device.type, enabled=False):
            out = F.linear(F.gelu(a), weight, bias)
        ctx.save_for_backward(a, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        a, weight = ctx.saved_tensors
        grad_out = grad_out.to(a.dtype)
        hidden = F.gelu(a)
        grad_a = torch.ops.aten.gelu_backward(grad_out @ weight, a)
        flat_grad, flat_hidden = grad_out.reshape(-1, grad_out.shape[-1]), hidden.reshape(-1, hidden.shape[-1])
        grad_w = flat_grad.t() @ flat_hidden
        grad_b = flat_grad.sum(0)
        a_dt, w_dt, b_dt = ctx.dtypes
        return grad_a.to(a_dt), grad_w.to(w_dt), grad_b.to(b_dt)


class Mlp(nn.Module):
    """Two-layer feed-forward ``d -> hidden -> d``.

    ``kind="gelu"`` is the official/ViT MLP (``fc1``, GELU, ``fc2``). ``kind="geglu"`` is the seed's
    GEGLU: ``fc1`` projects to ``2 * hidden``, the first half is gated by GELU of the second half.
    """

    def __init__(self, *, dim: int, hidden: int, kind: str = "gelu", drop: float = 0.0):
        super().__init__()
        self.kind = kind
        self.fc1 = nn.Linear(dim, hidden * (2 if kind == "geglu" else 1))
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.kind == "geglu":
            x, gate = x.chunk(2, dim=-1)
            return self.drop(self.fc2(self.drop(x * F.gelu(gate))))
        if torch.is_grad_enabled() and not (self.training and self.drop.p > 0):  # keep one activation, not two
            return self.drop(_GeluLinear.apply(x, self.fc2.weight, self.fc2.bias))
        return self.drop(self.fc2(self.drop(F.gelu(x))))


class DropPath(nn.Module):
    """Stochastic depth: drops whole rows of a residual branch while training.

    ``keep = drop_path.sample(n, like)`` draws one scale per row (None when inactive) the way the official code
    and HF draw it (``floor(rand(n) + keep_prob) / keep_prob``); ``drop_path.scale(x, keep, groups)`` scales a
    tensor whose dim 0 is ``n`` or ``(n groups)``.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def sample(self, rows: int, like: torch.Tensor) -> torch.Tensor | None:
        if self.p == 0.0 or not self.training:
            return None
        keep = 1.0 - self.p
        return torch.floor(torch.rand(rows, dtype=like.dtype, device=like.device) + keep).div_(keep)

    @staticmethod
    def scale(x: torch.Tensor, keep: torch.Tensor | None, groups: int = 1) -> torch.Tensor:
        if keep is None:
            return x
        scale = keep.repeat_interleave(groups) if groups > 1 else keep
        return x * scale.view((-1,) + (1,) * (x.ndim - 1))

    def extra_repr(self) -> str:
        return f"p={self.p}"
