"""Rotary embeddings are true rotations: q.k after rotation depends only on the relative offset."""

import pytest
import torch

from timesformer.model.embeddings import apply_rotary, rotary_angles, rotate_qk


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


def reference_qk(qkv, cos, sin, heads):
    q, k, v = qkv.unflatten(-1, (3, heads, -1)).unbind(-3)
    return torch.stack([apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v], dim=-3).flatten(-3)


@pytest.mark.parametrize("grad", [True, False])
def test_rotate_qk_turns_queries_and_keys_and_passes_values(grad):
    """The fused rotation (an autograd function in training, plain ops otherwise) is ``apply_rotary`` on q and k:
    values, gradients, and the values' slice untouched."""
    heads, e = 3, 8
    qkv = torch.randn(2, 4, 3, 5, 3 * heads * e, dtype=torch.float64, requires_grad=grad)
    angles = rotary_angles("tyx", (4, 3, 5), e).to(torch.float64).unsqueeze(-2)  # t h w 1 (e/2)
    cos, sin = angles.cos(), angles.sin()
    got, want = rotate_qk(qkv, cos, sin, heads), reference_qk(qkv, cos, sin, heads)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert torch.equal(got[..., 2 * heads * e :], qkv[..., 2 * heads * e :])
    assert not torch.allclose(got[..., : heads * e], qkv[..., : heads * e])  # the queries did turn
    if grad:
        g = torch.randn_like(want)
        (got_grad,) = torch.autograd.grad(got, qkv, g.transpose(0, 1).contiguous().transpose(0, 1))  # strided
        (want_grad,) = torch.autograd.grad(want, qkv, g)
        torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12)
        small = torch.randn(1, 2, 1, 2, 3 * 1 * 4, dtype=torch.float64, requires_grad=True)
        turn = rotary_angles("tx", (2, 1, 2), 4).to(torch.float64).unsqueeze(-2)
        assert torch.autograd.gradcheck(lambda x: rotate_qk(x, turn.cos(), turn.sin(), 1), (small,))


def test_rotate_qk_keeps_the_promoted_dtype():
    """bf16 activations against fp32 tables come out fp32, as ``apply_rotary`` does; their gradient is bf16."""
    qkv = torch.randn(2, 4, 3 * 2 * 8, dtype=torch.bfloat16, requires_grad=True)
    angles = rotary_angles("t", (4, 1, 1), 8).view(4, 1, 4)
    out = rotate_qk(qkv, angles.cos(), angles.sin(), 2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference_qk(qkv, angles.cos(), angles.sin(), 2))
    out.sum().backward()
    assert qkv.grad.dtype == torch.bfloat16


def test_rotate_qk_takes_second_order_gradients_torch_func_and_tracing():
    """The fused autograd function stays out of the way of what it doesn't serve: a differentiable backward
    (``create_graph``), ``torch.func.grad``, ``torch.jit.trace``, and tables that need their own gradient."""
    angles = rotary_angles("t", (4, 1, 1), 8).to(torch.float64).view(4, 1, 4)
    cos, sin = angles.cos(), angles.sin()
    qkv = torch.randn(2, 4, 3 * 2 * 8, dtype=torch.float64, requires_grad=True)

    def energy(fn, x):
        return (fn(x) ** 2).sum()

    def ours(x):
        return rotate_qk(x, cos, sin, 2)

    def theirs(x):
        return reference_qk(x, cos, sin, 2)

    grads = []
    for fn in (ours, theirs):
        (g,) = torch.autograd.grad(energy(fn, qkv), qkv, create_graph=True)
        grads.append(torch.autograd.grad(g.sum(), qkv)[0])
    torch.testing.assert_close(*grads)
    torch.testing.assert_close(
        torch.func.grad(lambda x: energy(ours, x))(qkv.detach()),
        torch.func.grad(lambda x: energy(theirs, x))(qkv.detach()),
    )

    class Rotating(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(48, 48).double()

        def forward(self, x):
            return rotate_qk(self.qkv(x), cos, sin, 2)

    module, x = Rotating(), torch.randn(2, 4, 48, dtype=torch.float64)
    torch.testing.assert_close(torch.jit.trace(module, (x,))(x), module(x))
    table = cos.clone().requires_grad_()
    rotate_qk(qkv, table, sin, 2).sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0
