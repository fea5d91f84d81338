"""Rotary embeddings are true rotations: q.k after rotation depends only on the relative offset."""

import pytest
import torch

from timesformer.model.embeddings import apply_rotary, rotary_angles


def rotated(x, axes, sizes, pos):
    angles = rotary_angles(axes, sizes, x.shape[-1])[pos]
    return apply_rotary(x, angles.cos(), angles.sin())


@pytest.mark.parametrize("axes", ["t", "y", "x", "yx", "tyx"])
def test_dot_product_depends_only_on_offset(axes):
    sizes = (12, 9, 11)
    q, k = torch.randn(2, 64, dtype=torch.float64).unbind(0)
    # the same offset (dt, dy, dx) between query and key, at two different absolute places
    offsets = [(3, 2, 4), (-2, 5, -3)]
    for off in offsets:
        p1 = (3, 1, 5)
        p2 = (5, 2, 6)
        d1 = rotated(q, axes, sizes, p1) @ rotated(k, axes, sizes, tuple(a + o for a, o in zip(p1, off)))
        d2 = rotated(q, axes, sizes, p2) @ rotated(k, axes, sizes, tuple(a + o for a, o in zip(p2, off)))
        assert torch.allclose(d1, d2, atol=1e-5), (axes, off)


@pytest.mark.parametrize("axes", ["t", "yx", "tyx"])
def test_rotation_keeps_norm_and_sees_every_axis(axes):
    sizes = (6, 6, 6)
    q, k = torch.randn(2, 32, dtype=torch.float64).unbind(0)
    base = rotated(q, axes, sizes, (0, 0, 0)) @ rotated(k, axes, sizes, (0, 0, 0))
    for axis, name in enumerate("tyx"):
        pos = [0, 0, 0]
        pos[axis] = 2
        qr = rotated(q, axes, sizes, tuple(pos))
        assert torch.allclose(qr.norm(), q.norm())  # a rotation
        moved = qr @ rotated(k, axes, sizes, (0, 0, 0))
        # an axis in `axes` changes the score, an axis not in it does not
        assert (not torch.allclose(moved, base)) == (name in axes)


def test_seed_temporal_rotary_is_not_a_rotation():
    """The seed builds half-split frequencies but rotates interleaved pairs: norms change, offsets leak."""
    from timesformer_pytorch.rotary import RotaryEmbedding, apply_rot_emb

    sin, cos = RotaryEmbedding(64)(16, device="cpu")
    q = torch.randn(1, 16, 64)
    q_rot, _ = apply_rot_emb(q.clone(), q.clone(), (sin, cos))
    assert not torch.allclose(q_rot.norm(dim=-1), q.norm(dim=-1), atol=1e-3)
