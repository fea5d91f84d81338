"""Attention: one function with a fast path and a reference path, and the qkv/proj module.

Legend: ``B`` batch of attention groups, ``k`` heads, ``L`` / ``S`` query / key length, ``e`` head dim.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMPLS = ("sdpa", "math")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    impl: str = "sdpa",
) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T / sqrt(e)) v``.

    Args:
        q: ``B k L e``; k, v: ``B k S e``.
        mask: bool, broadcastable to ``B k L S``; True = may attend. Every row must keep one key.
        dropout_p: dropout on the attention probabilities (pass 0 in eval).
        impl: ``"sdpa"`` (``F.scaled_dot_product_attention``, fused kernels) or ``"math"`` (explicit
            einsum + softmax, the readable reference the tests compare against).

    Returns:
        ``B k L e``.
    """
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if impl != "math":
        raise ValueError(f"attention impl must be one of {IMPLS}; got {impl!r}")
    scores = torch.einsum("bkle,bkse->bkls", q * q.shape[-1] ** -0.5, k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.einsum("bkls,bkse->bkle", probs, v)


class Attention(nn.Module):
    """Fused qkv projection and output projection around :func:`attention`.

    The grouping of tokens into attention sequences is done by the caller (see ``blocks.py``); this
    module owns the weights, named as in the official code (``qkv``, ``proj``).
    """

    def __init__(self, *, dim: int, heads: int, dim_head: int, qkv_bias: bool, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``B L (3 k e)`` -> three ``B k L e`` views (no copy)."""
        B, L, _ = qkv.shape
        return qkv.view(B, L, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """``... (k e)`` -> ``... d``: output projection and dropout."""
        return self.proj_drop(self.proj(out))
