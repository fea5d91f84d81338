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
    """Stochastic depth: drops a whole residual branch per sample while training.

    ``keep = drop_path.sample(b, like)`` draws one scale per sample (None when inactive);
    ``drop_path.scale(x, keep, groups)`` scales a tensor whose dim 0 is ``b`` or ``(b groups)``, so patch tokens
    in any grouped layout and the cls token of a sample are dropped together.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def sample(self, batch: int, like: torch.Tensor) -> torch.Tensor | None:
        if self.p == 0.0 or not self.training:
            return None
        keep = 1.0 - self.p
        return like.new_empty(batch).bernoulli_(keep).div_(keep)

    @staticmethod
    def scale(x: torch.Tensor, keep: torch.Tensor | None, groups: int = 1) -> torch.Tensor:
        if keep is None:
            return x
        scale = keep.repeat_interleave(groups) if groups > 1 else keep
        return x * scale.view((-1,) + (1,) * (x.ndim - 1))

    def extra_repr(self) -> str:
        return f"p={self.p}"
