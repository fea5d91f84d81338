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
        x = self.fc1(x)
        if self.kind == "geglu":
            x, gate = x.chunk(2, dim=-1)
            x = x * F.gelu(gate)
        else:
            x = F.gelu(x)
        return self.drop(self.fc2(self.drop(x)))


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample (dim 0) while training.

    Takes several tensors of one batch (patch tokens and cls token) and drops the same samples in all.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, *xs: torch.Tensor):
        if self.p == 0.0 or not self.training:
            return xs if len(xs) > 1 else xs[0]
        keep = 1.0 - self.p
        mask = xs[0].new_empty(xs[0].shape[0]).bernoulli_(keep).div_(keep)
        out = tuple(x * mask.view((-1,) + (1,) * (x.ndim - 1)) for x in xs)
        return out if len(out) > 1 else out[0]

    def extra_repr(self) -> str:
        return f"p={self.p}"
