"""The TimeSformer block: a chain of attention stages over groups of patch tokens, then the MLP.

Legend: ``b t h w`` batch x frames x patch grid, ``d`` model dim, ``c`` cls copies (1, or ``t`` for the
official space-only model), ``G`` groups, ``L`` tokens per group, ``k`` heads, ``e`` head dim.

One block class covers the five schemes of the paper (``partition.stages_for``):

* pre-stages (temporal for divided; local for sparse; temporal and width for axial) each have
  ``{name}_norm1``, ``{name}_attn`` and ``{name}_fc`` -- for divided these are the official
  ``temporal_norm1``, ``temporal_attn`` and ``temporal_fc`` (zero-initialised there);
* the final stage (spatial, joint, global or height) has the official ``norm1`` and ``attn``;
* ``norm2`` and ``mlp`` follow.

How the cls token takes part (``cls_attention``):

* ``"average"`` (official): the cls token skips the pre-stages; in the final stage it is copied into every
  group (every frame, for divided), and the copies' outputs are averaged over the groups that hold a real
  frame. With ``c == G`` cls copies (official space-only: one cls per frame) each group keeps its own.
* ``"global"`` (the seed): in every stage the cls token's query attends to all tokens of the clip, and every
  group's keys and values include the cls token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, attention, attention_probs
from .embeddings import apply_rotary
from .layers import DropPath, Mlp
from .partition import Partition, stages_for


@dataclass
class TokenContext:
    """What every block needs to know about the clip, computed once per forward.

    Attributes:
        valid: ``b t`` bool frame mask (True = real frame) or None.
        rope: rotary ``(cos, sin)`` per axes string, each ``t h w 1 (e/2)``; None for learned embeddings.
    """

    valid: torch.Tensor | None = None
    rope: dict | None = None
    record: list | None = None  # when a list, every stage appends its head-averaged attention (explanations)


def shift_tokens(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Token shift (the seed's ``shift_tokens``): the first third of channels comes from the next frame, the
    second third stays, the third third comes from the previous frame (zeros past the ends).

    Padded frames are zeroed first, so a real frame never reads a padded frame's content.
    ``x: b t h w d -> b t h w d``.
    """
    if valid is not None:
        x = torch.where(valid[:, :, None, None, None], x, 0.0)
    c = x.shape[-1] // 3
    nxt = F.pad(x[:, 1:, ..., :c], (0, 0, 0, 0, 0, 0, 0, 1))
    prv = F.pad(x[:, :-1, ..., 2 * c : 3 * c], (0, 0, 0, 0, 0, 0, 1, 0))
    return torch.cat([nxt, x[..., c : 2 * c], prv, x[..., 3 * c :]], dim=-1)


class Block(nn.Module):
    """One TimeSformer block. ``forward(cls: b c d, x: b t h w d, ctx) -> (cls, x)``."""

    def __init__(
        self,
        *,
        dim: int,
        heads: int,
        dim_head: int,
        attention: str,
        mlp_ratio: float = 4.0,
        mlp: str = "gelu",
        qkv_bias: bool = True,
        temporal_fc: bool = True,
        cls_attention: str = "average",
        shift: bool = False,
        norm_eps: float = 1e-6,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_impl: str = "sdpa",
        sparse_windows: int = 2,
        sparse_stride: int = 2,
    ):
        super().__init__()
        self.cls_attention, self.shift, self.attn_impl = cls_attention, shift, attn_impl
        pre, (self.final_name, self.final) = stages_for(
            attention, sparse_windows=sparse_windows, sparse_stride=sparse_stride
        )
        self.pre_stages = [name for name, _ in pre]
        self.partitions = dict(pre)
        self.partitions[self.final_name] = self.final
        attn_kw = dict(dim=dim, heads=heads, dim_head=dim_head, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        for name in self.pre_stages:
            setattr(self, f"{name}_norm1", nn.LayerNorm(dim, eps=norm_eps))
            setattr(self, f"{name}_attn", Attention(**attn_kw))
            setattr(self, f"{name}_fc", nn.Linear(dim, dim) if temporal_fc else nn.Identity())
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(**attn_kw)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim=dim, hidden=int(dim * mlp_ratio), kind=mlp, drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, cls: torch.Tensor, x: torch.Tensor, ctx: TokenContext):
        """Stochastic depth draws as the official code does for the official blocks: an independent mask per branch
        and per row of the tensor that branch sees -- per (clip, patch position) for temporal attention, per
        (clip, frame) for spatial attention (the cls copies dropped before they are averaged), per clip for the
        MLP (per (clip, frame) for space-only, whose rows are frames). The seed's blocks (``global`` cls) drop
        the whole block per clip."""
        glob = self.cls_attention == "global"
        b, t, h, w, _ = x.shape
        block_keep = self.drop_path.sample(b, x) if glob else None
        stages = [(name, *(getattr(self, f"{name}_{p}") for p in ("norm1", "attn", "fc"))) for name in self.pre_stages]
        stages.append((self.final_name, self.norm1, self.attn, nn.Identity()))
        for name, norm, attn, fc in stages:
            final = name == self.final_name
            part = self.partitions[name]
            cls_in = norm(cls) if (final or glob) else None
            xo, co = self._attend(attn, part, cls_in, self._pre(norm(x), ctx), ctx)
            groups = xo.shape[0] // b
            # per token, on the grouped layout, then one ungroup back into the (dense) residual stream
            if glob:
                x = x + part.ungroup(self._project(attn, fc, xo, block_keep, groups), (b, t, h, w))
                if co is not None:
                    cls = cls + self._project(attn, fc, co, block_keep, 1)
                continue
            keep = self.drop_path.sample(b * groups, x)  # a row per group: one patch position, one frame ...
            x = x + part.ungroup(self._project(attn, fc, xo, keep, 1), (b, t, h, w))
            if co is not None:  # the copies, each dropped with its group's row, then averaged (or one per frame)
                copies, weight = co
                res = self._project(attn, fc, copies.flatten(0, 1)[:, None], keep, 1).view(b, groups, -1)
                if cls.shape[1] == 1:
                    res = (
                        res.mean(1, keepdim=True)
                        if weight is None
                        else ((res * weight[..., None]).sum(1, keepdim=True) / weight.sum(1)[:, None, None])
                    )
                cls = cls + res
        if glob:
            keep, rows = block_keep, b
        else:
            rows = b * cls.shape[1]  # per clip; per (clip, frame) for space-only with a cls copy per frame
            keep = self.drop_path.sample(rows, x)
        scale = None if keep is None else keep.view(b, -1)
        x = x + self._scale(self.mlp(self._pre(self.norm2(x), ctx)), scale)
        cls = cls + self._scale(self.mlp(self.norm2(cls)), scale)
        return cls, x

    @staticmethod
    def _scale(y: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """``y: b t ...`` or ``b c d`` scaled by ``keep: b 1`` (per clip) or ``b t`` (per clip and frame)."""
        if keep is None:
            return y
        return y * keep.view(keep.shape + (1,) * (y.ndim - 2))

    def _project(self, attn: Attention, fc: nn.Module, out: torch.Tensor, keep, groups: int) -> torch.Tensor:
        """``fc(drop_path(proj(out)))``, the official order, for ``out: (b G) L (k e)``.

        With a ``temporal_fc`` the two linear maps fold into one: ``W = W_fc W_proj``, ``c = W_fc b_proj``, and
        ``fc(m * proj(o)) = m * (o W^T + c) + b_fc`` for the per-sample drop-path scale ``m``. Exact algebra that
        saves one d x d matmul per token (and its stored activation) for a d x d x d one per block. Not when
        output dropout sits between the two maps in training.
        """
        if not isinstance(fc, nn.Linear) or (self.training and attn.proj_drop.p > 0):
            return fc(self.drop_path.scale(attn.output(out), keep, groups))
        weight = fc.weight @ attn.proj.weight
        inner = fc.weight @ attn.proj.bias
        if keep is None:
            return F.linear(out, weight, inner + fc.bias)
        return self.drop_path.scale(F.linear(out, weight, inner), keep, groups) + fc.bias

    @torch.no_grad()
    def fold_stage_fc(self):
        """Fold each pre-stage's ``fc`` into its attention's ``proj`` once, for inference copies: ``proj`` becomes
        ``x -> W_fc (W_proj x + b_proj) + b_fc`` and ``fc`` an identity. Exact, and it leaves every linear map a
        plain ``nn.Linear`` of constant weights (what quantizers and compilers look for), where :meth:`_project`
        recomputes ``W_fc W_proj`` on every call. Changes the state dict's keys: not for checkpoints."""
        for name in self.pre_stages:
            fc, proj = getattr(self, f"{name}_fc"), getattr(self, f"{name}_attn").proj
            if isinstance(fc, nn.Linear):
                proj.bias.copy_(fc.weight @ proj.bias + fc.bias)
                proj.weight.copy_(fc.weight @ proj.weight)
                setattr(self, f"{name}_fc", nn.Identity())

    def _pre(self, x, ctx):
        return shift_tokens(x, ctx.valid) if self.shift else x

    def _attend(self, attn: Attention, part: Partition, cls: torch.Tensor | None, x: torch.Tensor, ctx: TokenContext):
        """Attention of one stage. ``cls: b c d`` (normed) or None when the cls token sits this stage out;
        ``x: b t h w d`` (normed). Returns ``x_out: (b G) L (k e)`` still grouped by ``part``, and for the cls token
        None, ``b 1 (k e)`` (``global``), or ``(copies: b G (k e), weights: b G or None)`` (``average``: one copy
        per group, to be averaged over groups with those weights after projection), all before the projection."""
        b, t, h, w, _ = x.shape
        qkv = attn.qkv(x)  # b t h w (3 k e)
        if ctx.rope is not None:  # rotate patch queries and keys by their position (the cls token is not rotated)
            cos, sin = ctx.rope[part.axes]
            q, k, v = qkv.unflatten(-1, (3, attn.heads, attn.dim_head)).unbind(-3)
            qkv = torch.stack([apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v], dim=-3).flatten(-3)
        groups = part.group(qkv)  # (b G) L (3 k e)
        G = groups.shape[0] // b

        # which slots hold a real token of a real frame: (b G) L, or None when all do
        real = None
        if ctx.valid is not None:
            real = part.group(ctx.valid[:, :, None, None, None].expand(b, t, h, w, 1)).squeeze(-1)
        slot = part.slot_valid(t, h, w, x.device)
        if slot is not None:
            real = slot.repeat(b, 1) if real is None else real & slot.repeat(b, 1)
        # keys to hide: padding slots always; padded frames where a group spans several frames
        key_ok = real if (slot is not None or part.spans_time) else None

        if cls is not None:
            cls_qkv = attn.qkv(cls)  # b c (3 k e)
            copies = cls_qkv.expand(b, G, -1) if cls_qkv.shape[1] == 1 else cls_qkv
            groups = torch.cat([copies.reshape(b * G, 1, -1), groups], dim=1)
            if key_ok is not None:
                key_ok = F.pad(key_ok, (1, 0), value=True)
        q, k, v = attn.split_heads(groups)
        glob = cls is not None and self.cls_attention == "global"
        if glob:  # the cls query is answered separately, over the whole clip
            q = q[:, :, 1:]
        mask = None
        if key_ok is not None:
            # a group with no real key (all its frames padded) attends unmasked; its outputs only reach padded tokens
            key_ok = key_ok | ~key_ok.any(-1, keepdim=True)
            mask = key_ok[:, None, None, :]
        drop = attn.attn_drop if self.training else 0.0
        out, probs = self._attention(q, k, v, mask, drop, ctx)  # (b G) k Lq e
        if probs is not None:
            mode = "none" if cls is None else ("global" if glob else "average")
            ctx.record.append({"partition": part, "size": (b, t, h, w), "probs": probs, "cls": mode, "real": real})
        out = out.transpose(1, 2).flatten(2)  # (b G) Lq (k e)

        cls_out = None
        if cls is not None and not glob:
            copies, out = out[:, 0].unflatten(0, (b, G)), out[:, 1:]  # b G (k e)
            # the copies are averaged (after projection) over the groups holding a real token: weights b G
            weight = None
            if real is not None and ctx.valid is not None and cls.shape[1] == 1:
                weight = real.any(-1).unflatten(0, (b, G)).to(copies.dtype)
            cls_out = (copies, weight)
        elif glob:
            cls_out = self._cls_global(attn, qkv, cls_qkv, ctx, drop)
        return out, cls_out

    def _cls_global(self, attn, qkv, cls_qkv, ctx, drop):
        """The seed's cls step: its query attends to itself and every patch token of the clip."""
        b = qkv.shape[0]
        tokens = torch.cat([cls_qkv, qkv.reshape(b, -1, qkv.shape[-1])], dim=1)  # b (1 + t h w) (3 k e)
        q, k, v = attn.split_heads(tokens)
        mask = None
        if ctx.valid is not None:
            n = qkv.shape[2] * qkv.shape[3]
            keys = F.pad(ctx.valid.repeat_interleave(n, dim=1), (1, 0), value=True)
            mask = keys[:, None, None, :]
        out, probs = self._attention(q[:, :, :1], k, v, mask, drop, ctx)
        if probs is not None:
            ctx.record.append({"global_cls": probs[:, 0]})  # b (1 + t h w)
        return out.transpose(1, 2).flatten(2)  # b 1 (k e)

    def _attention(self, q, k, v, mask, drop: float, ctx: TokenContext):
        """``(out: B k L e, head-averaged fp32 probabilities B L S`` when ``ctx`` records, else None)."""
        if ctx.record is None:
            return attention(q, k, v, mask=mask, dropout_p=drop, impl=self.attn_impl), None
        probs = attention_probs(q, k, mask)  # explicit probabilities, kept for attention rollout
        return probs @ v, probs.mean(1).float()
