"""Where the model looked: attention rollout through space and time.

Method (Abnar & Zuidema's rollout, adapted to factorised attention). Every attention stage of every block --
temporal, spatial (and the local/global, width/height or joint stages of the other schemes) -- is written as one
token-mixing matrix ``M`` over all tokens ``[cls, t*h*w patches]``: each group's head-averaged attention is placed
at its tokens' rows and columns; where the cls token is copied into every frame (divided attention) its row is the
mean of the copies' rows over frames that hold a real frame; where it attends the whole clip (the seed's), its row
is that attention; where it sits a stage out, its row is the identity. The residual connection is accounted as
``A = (M + I) / 2``, rows renormalised, and the stages chain as ``R = A_last ... A_first``. The cls row of ``R``
says how much each patch of each frame flowed into the prediction. Maps are normalised to sum to 1 in every frame;
frame importance is each frame's share of the total.

Legend: ``t h w`` frames x patch grid; ``N = 1 + t*h*w`` tokens.
"""
from __future__ import annotations

import torch

from ..model import TimeSformer


def _token_ids(partition, size) -> torch.Tensor:
    """Token id (1-based: 0 is cls; padding slots -> -1) of every slot of every group: ``G L``."""
    _, t, h, w = size
    ids = torch.arange(1, 1 + t * h * w, dtype=torch.float64).view(1, t, h, w, 1)
    grouped = partition.group(ids).squeeze(-1)
    return grouped.round().long().where(grouped > 0, torch.full_like(grouped, -1, dtype=torch.long))


def _stage_matrix(rec: dict, n: int, pending_global: torch.Tensor | None) -> torch.Tensor:
    """``N N`` mixing matrix of one stage (sample 0)."""
    probs = rec["probs"]  # (b G) Lq Lk
    ids = _token_ids(rec["partition"], rec["size"])  # G L
    G, L = ids.shape
    probs = probs[:G]  # sample 0
    m = torch.zeros(n + 1, n + 1, dtype=torch.float64)  # row/column n: sink for padding slots
    ids = ids.where(ids >= 0, torch.full_like(ids, n))
    if rec["cls"] == "none":
        rows, cols = ids[:, :, None].expand(G, L, L), ids[:, None, :].expand(G, L, L)
        m.index_put_((rows.reshape(-1), cols.reshape(-1)), probs.double().reshape(-1), accumulate=True)
        m[0, 0] = 1.0
    else:
        keys = torch.cat([torch.zeros(G, 1, dtype=torch.long), ids], dim=1)  # cls first among the keys
        if rec["cls"] == "global":  # queries: patches only
            rows, cols = ids[:, :, None].expand(G, L, L + 1), keys[:, None, :].expand(G, L, L + 1)
            m.index_put_((rows.reshape(-1), cols.reshape(-1)), probs.double().reshape(-1), accumulate=True)
            m[0, :n] = pending_global[0].double()
        else:  # cls copy in each group, its rows averaged over groups holding a real token
            patch = probs[:, 1:]
            rows, cols = ids[:, :, None].expand(G, L, L + 1), keys[:, None, :].expand(G, L, L + 1)
            m.index_put_((rows.reshape(-1), cols.reshape(-1)), patch.double().reshape(-1), accumulate=True)
            real = rec["real"]
            weight = real[:G].any(-1).double() if real is not None else torch.ones(G, dtype=torch.float64)
            weight = weight / weight.sum()
            cls_rows = probs[:, 0].double() * weight[:, None]  # G (1 + L)
            m.index_put_((torch.zeros_like(keys).reshape(-1), keys.reshape(-1)), cls_rows.reshape(-1),
                         accumulate=True)
    return m[:n, :n]


@torch.no_grad()
def attention_rollout(model: TimeSformer, video: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """Rollout for one clip ``video: 1 t c H W``.

    Returns ``{"maps": t h w`` (each frame sums to 1), ``"frame_importance": t`` (sums to 1), ``"logits": classes}``.
    """
    if video.shape[0] != 1:
        raise ValueError(f"attention_rollout explains one clip: video must be 1 t c H W; got {tuple(video.shape)}")
    model.eval()
    cls, x, ctx = model.embed(video, mask)
    ctx.record = []
    for block in model.blocks:
        cls, x = block(cls, x, ctx)
    logits = model.head(model.norm(model._pool_cls(cls, mask)))[0]
    _, t, h, w, _ = x.shape
    n = 1 + t * h * w
    rollout = torch.eye(n, dtype=torch.float64)
    records = ctx.record
    for i, rec in enumerate(records):
        if "global_cls" in rec:
            continue  # consumed with the stage it belongs to (recorded right after it)
        pending = records[i + 1]["global_cls"] if rec["cls"] == "global" else None
        mix = _stage_matrix(rec, n, pending)
        a = 0.5 * mix + 0.5 * torch.eye(n, dtype=torch.float64)
        a = a / a.sum(-1, keepdim=True)
        rollout = a @ rollout
    relevance = rollout[0, 1:].view(t, h, w).float()
    if mask is not None:
        relevance = relevance * mask[0].view(t, 1, 1)
    per_frame = relevance.sum((1, 2))
    maps = relevance / per_frame.clamp(min=1e-12)[:, None, None]
    return {"maps": maps, "frame_importance": per_frame / per_frame.sum(), "logits": logits.float()}
