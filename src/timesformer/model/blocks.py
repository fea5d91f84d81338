"""The TimeSformer block: a chain of attention stages over groups of patch tokens, then the MLP.

Legend: ``b t h w`` batch x frames x patch grid, ``d`` model dim, ``c`` cls copies (1, or ``t`` for the
official space-only model), ``G`` groups, ``L`` tokens per group, ``k`` heads, ``e`` head dim.

One block class covers the five schemes of the paper (``partition.stages_for``):

* pre-stages (temporal for divided; local for sparse; temporal and width for axial) each have
  ``{name}_norm1``, ``{name}_attn`` and ``{name}_fc`` -- for divided these are the official
  ``temporal_norm1``, ``temporal_attn`` and ``temporal_fc`` (zero-initialised there);
* the final stage (spatial, joint, global or height) has the official ``norm1`` and ``attn``;
* ``norm2`` and ``mlp`` follow.

Each stage is the paper's residual step, ``x = x + fc(drop_path(attn(norm(x))))`` (``fc`` only after a pre-stage,
as the official code applies ``temporal_fc`` after stochastic depth), run as modules: every linear map is called
as a module, so hooks, adapters (LoRA) and fake quantization wrap what really runs. Faster kernels and the
``temporal_fc`` fold are a separate layer (``timesformer.fused``), applied on purpose.

How the cls token takes part (``cls_attention``):

* ``"average"`` (official): the cls token skips the pre-stages; in the final stage it is copied into every
  group (every frame, for divided), and the copies' outputs are averaged over the groups that hold a real
  frame. With ``c == G`` cls copies (official space-only: one cls per frame) each group keeps its own.
* ``"global"`` (the seed): in every stage the cls token's query attends to all tokens of the clip, and every
  group's keys and values include the cls token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, TokenContext
from .layers import DropPath, Mlp
from .partition import stages_for

__all__ = ["Block", "TokenContext", "shift_tokens"]


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
        self.cls_attention, self.shift = cls_attention, shift
        pre, (self.final_name, final) = stages_for(
            attention, sparse_windows=sparse_windows, sparse_stride=sparse_stride
        )
        self.pre_stages = [name for name, _ in pre]
        attn_kw = dict(
            dim=dim,
            heads=heads,
            dim_head=dim_head,
            qkv_bias=qkv_bias,
            cls_mode=cls_attention,
            attn_drop=attn_drop,
            proj_drop=drop,
            impl=attn_impl,
        )
        for name, partition in pre:
            setattr(self, f"{name}_norm1", nn.LayerNorm(dim, eps=norm_eps))
            setattr(self, f"{name}_attn", Attention(partition=partition, **attn_kw))
            setattr(self, f"{name}_fc", nn.Linear(dim, dim) if temporal_fc else nn.Identity())
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(partition=final, **attn_kw)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim=dim, hidden=int(dim * mlp_ratio), kind=mlp, drop=drop)
        self.drop_path = DropPath(drop_path)

    def stages(self) -> list[tuple[str, nn.Module, Attention, nn.Module]]:
        """``(name, norm, attn, fc)`` of each attention stage in order; the last one (no ``fc``) is the cls token's."""
        pre = [
            (name, *(getattr(self, f"{name}_{part}") for part in ("norm1", "attn", "fc"))) for name in self.pre_stages
        ]
        return pre + [(self.final_name, self.norm1, self.attn, nn.Identity())]

    def forward(self, cls: torch.Tensor, x: torch.Tensor, ctx: TokenContext):
        """Stochastic depth draws as the official code does for the official blocks: an independent mask per branch
        and per row of the tensor that branch sees -- per (clip, patch position) for temporal attention, per
        (clip, frame) for spatial attention (the cls copies dropped before they are averaged), per clip for the
        MLP (per (clip, frame) for space-only, whose rows are frames). The seed's blocks (``global`` cls) drop
        the whole block per clip."""
        glob = self.cls_attention == "global"
        b, t, h, w, _ = x.shape
        block_keep = self.drop_path.sample(b, x) if glob else None
        for name, norm, attn, fc in self.stages():
            joins = glob or name == self.final_name  # does the cls token take part in this stage
            out, cls_out = attn(self._shifted(norm(x), ctx), norm(cls) if joins else None, ctx)  # b t h w d
            if glob:
                x = x + fc(self.drop_path.scale(out, block_keep))
                if cls_out is not None:
                    cls = cls + fc(self.drop_path.scale(cls_out, block_keep))
                continue
            groups = attn.partition.num_groups(t, h, w)
            keep = self.drop_path.sample(b * groups, x)  # a row per group: one patch position, one frame ...
            group_keep = token_keep = None
            if keep is not None:
                group_keep = keep.view(b, groups)
                token_keep = group_keep[:, attn.partition.token_groups(t, h, w, x.device)]  # b t h w: its group's
            x = x + fc(self.drop_path.scale(out, token_keep))
            if cls_out is not None:  # the copies (b G d), each dropped with its group's row, then averaged
                real = None if ctx.valid is None else attn.partition.real_slots(ctx.valid, (b, t, h, w), x.device)
                cls = cls + self._pool_copies(self.drop_path.scale(cls_out, group_keep), cls.shape[1], real)
        if glob:
            keep = block_keep
        else:  # per clip; per (clip, frame) for space-only with a cls copy per frame
            keep = self.drop_path.sample(b * cls.shape[1], x)
        keep = None if keep is None else keep.view(b, -1)
        x = x + self.drop_path.scale(self.mlp(self._shifted(self.norm2(x), ctx)), keep)
        cls = cls + self.drop_path.scale(self.mlp(self.norm2(cls)), keep)
        return cls, x

    @staticmethod
    def _pool_copies(copies: torch.Tensor, c: int, real: torch.Tensor | None) -> torch.Tensor:
        """``b G d -> b c d``: one cls token (``c == 1``) averages its copies over the groups that hold a real token
        (``real: (b G) L`` slots, None when all are real); with a copy per group (``c == G``, official space-only)
        each keeps its own."""
        if c != 1:
            return copies
        if real is None:
            return copies.mean(1, keepdim=True)
        b, G, _ = copies.shape
        weight = real.any(-1).view(b, G).to(copies.dtype)
        return (copies * weight[..., None]).sum(1, keepdim=True) / weight.sum(1)[:, None, None]

    def _shifted(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        return shift_tokens(x, ctx.valid) if self.shift else x
