"""What joint space-time attention sees of time. In the paper every token carries its frame's learned time
embedding, so joint attention can tell every frame from every other; with rotary embeddings the scores depend on
the offset between frames. These tests check both on the first block's attention, with one head so that the
recorded probabilities give the scores exactly (``log p_ij - log p_ik = s_ij - s_ik``)."""

import pytest
import torch

from ..conftest import small_model


def joint_log_probs(model, video: torch.Tensor) -> torch.Tensor:
    """The first block's joint attention of clip 0: ``log p``, patch queries ``(t h w)`` x keys ``cls + (t h w)``."""
    cls, x, ctx = model.embed(video)
    ctx.record = []
    with torch.no_grad():
        model.blocks[0](cls, x, ctx)
    (record,) = [r for r in ctx.record if "probs" in r]
    return record["probs"][0].double().log()


def still_clip(frames: int = 4) -> torch.Tensor:
    """One picture repeated: whatever tells frames apart can only be position."""
    return torch.randn(1, 1, 3, 32, 32, dtype=torch.float64).expand(1, frames, 3, 32, 32).contiguous()


@pytest.mark.parametrize("cls_attention", ["global", "average"])
def test_rotary_joint_scores_depend_on_the_frame_offset_only(cls_attention):
    model = small_model(attention="joint", pos_emb="rotary", heads=1, dim_head=32, cls_attention=cls_attention).double()
    logp = joint_log_probs(model, still_clip())
    n = 16  # tokens per frame (4 x 4 patches); patch keys follow the cls key
    patches = logp[logp.shape[0] - 4 * n :, 1:]  # patch queries (the cls copy's row comes first where it has one)

    def score_gap(t: int, dt: int, patch: int = 5, other: int = 10) -> float:
        """How much more query (t, patch) scores key (t + dt, other) than key (t, other)."""
        q = t * n + patch
        return float(patches[q, (t + dt) * n + other] - patches[q, t * n + other])

    for dt in (1, 2):  # the same offset at two places in the clip: the same gap
        assert score_gap(0, dt) == pytest.approx(score_gap(1, dt), abs=1e-6)  # the angles are float32
    assert score_gap(1, -1) == pytest.approx(score_gap(2, -1), abs=1e-6)  # the angles are float32
    gaps = [score_gap(1, dt) for dt in (-1, 1, 2)]
    assert min(abs(g) for g in gaps) > 1e-5 and abs(gaps[0] - gaps[1]) > 1e-5  # earlier, later, further: all seen


def test_learned_joint_tells_frames_apart_by_the_time_table():
    """The paper's embeddings: a still clip's frames differ only by the time table, and joint attention's scores
    follow it; with the official zero-initialised table a still clip's frames are one and the same to it."""
    model = small_model(attention="joint", pos_emb="learned", heads=1, dim_head=32).double()
    logp = joint_log_probs(model, still_clip())
    n = 16
    by_frame = logp[5, 1:].view(4, n)[:, 10]  # query (0, patch 5) against patch 10 of every frame
    assert (by_frame.max() - by_frame.min()) > 1e-3
    with torch.no_grad():
        model.time_embed.zero_()
    by_frame = joint_log_probs(model, still_clip())[5, 1:].view(4, n)[:, 10]
    torch.testing.assert_close(by_frame, by_frame[:1].expand(4), rtol=0, atol=1e-9)


@pytest.mark.parametrize("pos_emb", ["rotary", "learned", "learned, zero time table"])
def test_a_reversed_clip_scores_differently_unless_the_time_table_is_zero(pos_emb):
    """Order-aware at initialisation with rotary embeddings or a non-zero time table; with the official zero
    time table a joint model starts exactly order-blind (only training the table breaks the tie)."""
    model = small_model(attention="joint", pos_emb=pos_emb.split(",")[0]).double()
    if pos_emb.endswith("zero time table"):
        with torch.no_grad():
            model.time_embed.zero_()
    video = torch.randn(1, 4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        gap = (model(video) - model(video.flip(1))).abs().max()
    assert gap < 1e-12 if pos_emb.endswith("zero time table") else gap > 1e-6


def test_joint_rotary_gives_time_fewer_turning_frequencies_than_a_temporal_stage():
    """Where a joint head's sense of frame order comes from with rotary embeddings: of its 16 frequency pairs
    (``dim_head`` 32, the demo's), time gets 6, and at base 10000 only 2 of them turn by 0.1 rad or more per frame;
    a temporal stage (divided, axial) gives all 16 to time, 5 of them turning that much."""
    from timesformer.model.embeddings import rotary_angles

    def turning(axes: str, base: float) -> int:
        angles = rotary_angles(axes, (8, 4, 4), 32, base=base)  # t h w pairs
        return int(((angles[1, 0, 0] - angles[0, 0, 0]).abs() >= 0.1).sum())

    assert (turning("tyx", 1e4), turning("t", 1e4)) == (2, 5)
    assert (turning("tyx", 100.0), turning("t", 100.0)) == (4, 9)
