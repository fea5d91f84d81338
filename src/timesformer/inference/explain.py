"""Where the model looked: attention rollout through space and time.

Method (Abnar & Zuidema's rollout, adapted to factorised attention). Every attention stage of every block --
temporal, spatial (and the local/global, width/height or joint stages of the other schemes) -- is a token-mixing
matrix ``M`` over all tokens ``[cls, t*h*w patches]``: each group's head-averaged attention sits at its tokens'
rows and columns; where the cls token is copied into every frame (divided attention) its row is the mean of the
copies' rows over frames that hold a real frame; where it attends the whole clip (the seed's), its row is that
attention; where it sits a stage out, its row is the identity. The residual connection is accounted as
``A = (M + I) / 2``, rows renormalised, and the stages chain as ``R = A_last ... A_first``. The cls row of ``R``
says how much each patch of each frame flowed into the prediction. Maps are normalised to sum to 1 in every frame;
frame importance is each frame's share of the total.

Only the cls row is needed, so it is carried from the last stage to the first as a vector, ``r <- r A``, with
each ``A`` applied straight from the grouped probabilities: the cost of the attention itself, never an ``N x N``
matrix (a 16x448 clip has N = 12545).

Legend: ``t h w`` frames x patch grid; ``N = 1 + t*h*w`` tokens; ``G L`` groups x slots of a stage.
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


def _apply_stage(rec: dict, row: torch.Tensor, pending_global: torch.Tensor | None) -> torch.Tensor:
    """``row @ A`` for one stage's ``A = rownorm((M + I) / 2)`` (sample 0), from its grouped probabilities.

    ``row: N`` float64 -> ``N``. Padding slots map to a sink token ``N`` that is dropped, as are its rows.
    """
    n = row.shape[0]
    probs = rec["probs"]  # (b G) Lq Lk
    ids = _token_ids(rec["partition"], rec["size"])  # G L
    G, L = ids.shape
    probs = probs[:G].double()  # sample 0
    ids = ids.where(ids >= 0, torch.full_like(ids, n))
    cols = ids if rec["cls"] == "none" else torch.cat([torch.zeros(G, 1, dtype=torch.long), ids], dim=1)
    kept = (cols < n).double()  # G Lk: columns that are tokens, not the sink
    patch = probs if rec["cls"] != "average" else probs[:, 1:]  # G L Lk: the patch queries' rows
    sums = torch.zeros(n + 1, dtype=torch.float64)  # row sums of M (kept columns only)
    sums.index_add_(0, ids.reshape(-1), (patch * kept[:, None]).sum(-1).reshape(-1))
    padded = torch.cat([row, row.new_zeros(1)])  # the sink's entry is 0: its row never contributes
    if rec["cls"] == "none":  # cls_row: M[0], the cls token's row
        cls_row = torch.zeros(n, dtype=torch.float64)
        cls_row[0] = 1.0
    elif rec["cls"] == "global":
        cls_row = pending_global[0].double()
    else:
        real = rec["real"]
        weight = real[:G].any(-1).double() if real is not None else torch.ones(G, dtype=torch.float64)
        weight = weight / weight.sum()
        cls_row = torch.zeros(n + 1, dtype=torch.float64)
        cls_row.index_add_(0, cols.reshape(-1), (probs[:, 0] * weight[:, None]).reshape(-1))
        cls_row = cls_row[:n]
    sums[0] = cls_row.sum()
    scaled = padded / (0.5 * sums + 0.5)  # row i of A is (M_i + e_i) / 2 over its sum
    out = torch.zeros(n + 1, dtype=torch.float64)
    out.index_add_(0, cols.reshape(-1), torch.einsum("gq,gqk->gk", scaled[ids], patch).reshape(-1))
    out = out[:n] + scaled[0] * cls_row
    return 0.5 * (out + scaled[:n])


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
    logits = model.head(model.norm(model.pool_cls(cls, mask)))[0]
    _, t, h, w, _ = x.shape
    n = 1 + t * h * w
    cls_row = torch.zeros(n, dtype=torch.float64)
    cls_row[0] = 1.0
    records = ctx.record
    for i in reversed(range(len(records))):  # r A_last ... A_first
        rec = records[i]
        if "global_cls" in rec:
            continue  # consumed with the stage it belongs to (recorded right after it)
        pending = records[i + 1]["global_cls"] if rec["cls"] == "global" else None
        cls_row = _apply_stage(rec, cls_row, pending)
    relevance = cls_row[1:].view(t, h, w).float()
    if mask is not None:
        relevance = relevance * mask[0].view(t, 1, 1)
    per_frame = relevance.sum((1, 2))
    maps = relevance / per_frame.clamp(min=1e-12)[:, None, None]
    return {"maps": maps, "frame_importance": per_frame / per_frame.sum(), "logits": logits.float()}


def explain_video(model: TimeSformer, path, spec, deadline: float | None = None) -> dict:
    """Rollout for one clip of a video file, sampled by ``spec`` (a ``ClipSpec``: the centre clip, centre crop);
    decoding past ``deadline`` (``time.monotonic()`` seconds) raises ``DecodeTimeout``.

    Returns ``attention_rollout``'s ``maps``, ``frame_importance`` and ``logits``, plus ``frames`` (the clip as shown:
    ``t c S S`` uint8, resized and centre-cropped like the model's input) and ``predicted`` (the top class's name).
    """
    from ..data.transforms import EvalTransform, center_crop, resize_short_side

    cfg = model.config
    with spec.open(path, train=False, deadline=deadline) as reader:
        frames, valid = reader.frames_at(spec.times(reader.duration, train=False))
    view = EvalTransform(crop_size=cfg.image_size, mean=cfg.mean, std=cfg.std).view(frames, 0)
    shown = center_crop(resize_short_side(frames, cfg.image_size), cfg.image_size).round().clamp(0, 255)
    result = attention_rollout(model, view[None], None if bool(valid.all()) else valid[None])
    top = int(result["logits"].argmax())
    return {**result, "frames": shown.to(torch.uint8), "predicted": cfg.labels[top] if cfg.labels else str(top)}
