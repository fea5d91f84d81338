"""Attention: the softmax kernel, and the ``Attention`` module (qkv -> attend within groups -> proj).

Legend: ``b t h w`` batch x frames x patch grid, ``d`` model dim, ``c`` cls copies, ``G`` groups per clip,
``L`` tokens per group, ``B = b G`` attention sequences, ``k`` heads, ``e`` head dim, ``S`` key length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import rotate_qk
from .partition import Partition

IMPLS = ("sdpa", "math")
CLS_MODES = ("average", "global")


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
        impl: ``"sdpa"``: ``F.scaled_dot_product_attention`` (PyTorch's fused kernels); ``"math"``: the explicit
            einsum + softmax that the tests compare against.

    Returns:
        ``B k L e``.
    """
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if impl != "math":
        raise ValueError(f"attention impl must be one of {IMPLS}; got {impl!r}")
    probs = attention_probs(q, k, mask)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.einsum("bkls,bkse->bkle", probs, v)


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The attention matrix ``softmax(q k^T / sqrt(e))``: ``B k L S`` (the reference path; explanations)."""
    scores = torch.einsum("bkle,bkse->bkls", q * q.shape[-1] ** -0.5, k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


@dataclass
class TokenContext:
    """What every attention layer needs to know about the clip, computed once per forward.

    Attributes:
        valid: ``b t`` bool frame mask (True = real frame) or None.
        rope: rotary ``(cos, sin)`` per axes string, each ``t h w 1 (e/2)``; None for learned embeddings.
        record: when a list, every attention appends its head-averaged probabilities (explanations).
    """

    valid: torch.Tensor | None = None
    rope: dict | None = None
    record: list | None = None


class Attention(nn.Module):
    """Multi-head self-attention within the groups of a partition, as timm's ``Attention`` plus the grouping.

    ``forward(x: b t h w d, cls: b c d or None, ctx) -> (x: b t h w d, cls_out)``:

    1. ``qkv = self.qkv(x)``, rotated by position when ``ctx.rope`` is set;
    2. the partition groups the tokens, ``b t h w -> (b G) L``, and each group attends among itself;
    3. ``self.proj`` maps the heads back to ``d``; the tokens go back to their ``b t h w`` places.

    The cls token (when given) takes part as ``cls_mode`` says:

    * ``"average"`` (official): a copy of it joins every group as one more query and key; ``cls_out`` is the
      copies' outputs, ``b G d`` (the block averages them). With ``c == G`` copies each group has its own.
    * ``"global"`` (the seed): every group's keys include it, and its own query attends to every token of the
      clip; ``cls_out`` is ``b 1 d``.

    The parameter names are the official ones (``qkv``, ``proj``).
    """

    def __init__(
        self,
        *,
        dim: int,
        heads: int,
        dim_head: int,
        partition: Partition,
        qkv_bias: bool = True,
        cls_mode: str = "average",
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        impl: str = "sdpa",
    ):
        super().__init__()
        if cls_mode not in CLS_MODES:
            raise ValueError(f"cls_mode must be one of {CLS_MODES}; got {cls_mode!r}")
        self.heads, self.dim_head, self.partition, self.cls_mode = heads, dim_head, partition, cls_mode
        inner = heads * dim_head
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.impl = impl
        self.kernel = attention  # (q, k, v, *, mask, dropout_p, impl) -> out; the speed layer may swap it

    def forward(self, x: torch.Tensor, cls: torch.Tensor | None = None, ctx: TokenContext | None = None):
        ctx = ctx if ctx is not None else TokenContext()
        part = self.partition
        b, t, h, w, _ = x.shape
        qkv = self.qkv(x)  # b t h w (3 k e)
        if ctx.rope is not None:  # rotate patch queries and keys by their position (the cls token is not rotated)
            qkv = rotate_qk(qkv, *ctx.rope[part.axes], self.heads)
        groups = part.group(qkv)  # (b G) L (3 k e)
        G = groups.shape[0] // b
        real = part.real_slots(ctx.valid, (b, t, h, w), x.device)  # (b G) L or None: slots holding a real token
        # keys to hide: padding slots always; padded frames where a group spans several frames
        key_ok = real if (part.spans_time or part.slot_valid(t, h, w, x.device) is not None) else None

        glob = cls is not None and self.cls_mode == "global"
        if cls is not None:
            cls_qkv = self.qkv(cls)  # b c (3 k e)
            copies = cls_qkv.expand(b, G, -1) if cls_qkv.shape[1] == 1 else cls_qkv
            groups = torch.cat([copies.reshape(b * G, 1, -1), groups], dim=1)  # (b G) (1 + L) (3 k e)
            if key_ok is not None:
                key_ok = F.pad(key_ok, (1, 0), value=True)
        q, k, v = self._split_heads(groups)  # (b G) k (1 + L) e each
        if glob:  # the cls query is answered separately, over the whole clip
            q = q[:, :, 1:]
        mask = None
        if key_ok is not None:
            # a group with no real key (all its frames padded) attends unmasked; its outputs only reach padded tokens
            mask = (key_ok | ~key_ok.any(-1, keepdim=True))[:, None, None, :]
        out = self._attend(q, k, v, mask, ctx, record=dict(partition=part, size=(b, t, h, w), real=real, cls=cls))
        # dense: SDPA may hand back a layout whose merged heads are strided, and F.linear on a strided 3-D input
        # falls back to a batched matmul over a copy of the weight per group (measured 4x slower)
        out = out.transpose(1, 2).flatten(2).contiguous()  # (b G) Lq (k e)
        out = self.proj_drop(self.proj(out))  # (b G) Lq d

        cls_out = None
        if cls is not None and not glob:
            cls_out, out = out[:, 0].unflatten(0, (b, G)), out[:, 1:]  # copies: b G d
        elif glob:
            cls_out = self.proj_drop(self.proj(self._cls_global(qkv, cls_qkv, ctx)))  # b 1 d
        return part.ungroup(out, (b, t, h, w)), cls_out  # b t h w d

    def _split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``B L (3 k e)`` -> three ``B k L e`` views (no copy)."""
        B, L, _ = qkv.shape
        return qkv.view(B, L, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)

    def _cls_global(self, qkv: torch.Tensor, cls_qkv: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        """The seed's cls step: its query attends to itself and every patch token of the clip. ``b 1 (k e)``."""
        b = qkv.shape[0]
        tokens = torch.cat([cls_qkv, qkv.reshape(b, -1, qkv.shape[-1])], dim=1)  # b (1 + t h w) (3 k e)
        q, k, v = self._split_heads(tokens)
        mask = None
        if ctx.valid is not None:
            n = qkv.shape[2] * qkv.shape[3]
            mask = F.pad(ctx.valid.repeat_interleave(n, dim=1), (1, 0), value=True)[:, None, None, :]
        out = self._attend(q[:, :, :1], k, v, mask, ctx, record=None)
        return out.transpose(1, 2).flatten(2).contiguous()

    def _attend(self, q, k, v, mask, ctx: TokenContext, record: dict | None) -> torch.Tensor:
        """``B k Lq e``. When ``ctx.record`` is a list, the explicit probabilities are kept (attention rollout)."""
        drop = self.attn_drop if self.training else 0.0
        if ctx.record is None:
            return self.kernel(q, k, v, mask=mask, dropout_p=drop, impl=self.impl)
        probs = attention_probs(q, k, mask)
        if record is None:  # the global cls query, recorded right after its stage
            ctx.record.append({"global_cls": probs.mean(1).float()[:, 0]})  # b (1 + t h w)
        else:
            mode = "none" if record["cls"] is None else self.cls_mode
            ctx.record.append({**record, "cls": mode, "probs": probs.mean(1).float()})
        return probs @ v
