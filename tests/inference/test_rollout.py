"""Attention rollout carried as a vector equals the dense N x N method it replaced (kept here as the reference)."""

import pytest
import torch

import timesformer as tf
from timesformer.inference import explain


def _dense_stage(rec: dict, n: int, pending_global: torch.Tensor | None) -> torch.Tensor:
    """``N N`` mixing matrix of one stage (sample 0)."""
    probs = rec["probs"]  # (b G) Lq Lk
    ids = explain._token_ids(rec["partition"], rec["size"])  # G L
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
            m.index_put_((torch.zeros_like(keys).reshape(-1), keys.reshape(-1)), cls_rows.reshape(-1), accumulate=True)
    return m[:n, :n]


def _dense_rollout(model, video, mask=None):
    """The method as it was: every stage as an N x N matrix, chained first to last, then the cls row."""
    cls, x, ctx = model.eval().embed(video, mask)
    ctx.record = []
    with torch.no_grad():
        for block in model.blocks:
            cls, x = block(cls, x, ctx)
    _, t, h, w, _ = x.shape
    n = 1 + t * h * w
    rollout = torch.eye(n, dtype=torch.float64)
    for i, rec in enumerate(ctx.record):
        if "global_cls" in rec:
            continue
        pending = ctx.record[i + 1]["global_cls"] if rec["cls"] == "global" else None
        a = 0.5 * _dense_stage(rec, n, pending) + 0.5 * torch.eye(n, dtype=torch.float64)
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    relevance = rollout[0, 1:].view(t, h, w)
    if mask is not None:
        relevance = relevance * mask[0].view(t, 1, 1)
    per_frame = relevance.sum((1, 2))
    return relevance / per_frame.clamp(min=1e-12)[:, None, None], per_frame / per_frame.sum()


@pytest.mark.parametrize("scheme", tf.ATTENTIONS)
@pytest.mark.parametrize("cls_attention", ["average", "global"])
@pytest.mark.parametrize("masked", [False, True])
def test_vector_rollout_equals_the_dense_method(scheme, cls_attention, masked):
    torch.manual_seed(0)
    model = tf.TimeSformer(
        tf.TimeSformerConfig(
            num_classes=3,
            num_frames=4,
            image_size=48,
            patch_size=8,
            dim=32,
            depth=3,
            heads=2,
            dim_head=16,
            attention=scheme,
            cls_attention=cls_attention,
            pos_emb="learned",
            temporal_fc=True,
            sparse_windows=2,
            sparse_stride=2,
        )
    )
    video = torch.randn(1, 5, 3, 40, 48)  # 5 frames of a 5 x 6 grid: windows and strides that don't divide
    mask = torch.tensor([[True, True, True, False, False]]) if masked else None
    maps, importance = _dense_rollout(model, video, mask)
    result = explain.attention_rollout(model, video, mask)
    torch.testing.assert_close(result["maps"], maps.float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result["frame_importance"], importance.float(), atol=1e-6, rtol=1e-5)
    assert result["maps"].std() > 0  # not a uniform map that any method would give
