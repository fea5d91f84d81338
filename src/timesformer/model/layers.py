"""Feed-forward and stochastic depth. Legend: ``d`` model dim."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
        x = self.fc1(x)  # ... hidden (geglu: ... 2*hidden)
        if self.kind == "geglu":
            x, gate = x.chunk(2, dim=-1)
            return self.drop(self.fc2(self.drop(x * F.gelu(gate))))
        return self.drop(self.fc2(self.drop(F.gelu(x))))


class DropPath(nn.Module):
    """Stochastic depth: drops whole rows of a residual branch while training.

    ``keep = drop_path.sample(n, like)`` draws one scale per row (None when inactive) the way the official code
    and HF draw it (``floor(rand(n) + keep_prob) / keep_prob``); ``DropPath.scale(x, keep)`` scales ``x`` whose
    leading dims are ``keep``'s shape. The caller says what a row is (a clip, a frame, a group of tokens).
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
    def scale(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if keep is None:
            return x
        return x * keep.view(keep.shape + (1,) * (x.ndim - keep.ndim))

    def extra_repr(self) -> str:
        return f"p={self.p}"
