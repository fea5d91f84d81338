"""Shapes, gradients, presets, checkpointing and the public API of the model."""

import pytest
import torch

import timesformer as tf

from ..conftest import POS, SCHEMES, small_config, small_model


@pytest.mark.parametrize("pos_emb", POS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_shapes_and_gradients(scheme, pos_emb):
    model = small_model(attention=scheme, pos_emb=pos_emb).train()
    video = torch.randn(2, 4, 3, 32, 32, requires_grad=True)
    logits = model(video)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"
    assert model.forward_features(video).shape == (2, 32)
    assert model.forward_tokens(video).shape == (2, 1 + 4 * 16, 32)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gradient_checkpointing_gives_same_gradients(scheme):
    model = small_model(attention=scheme)
    video = torch.randn(2, 4, 3, 32, 32)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model.train()
        model(video, mask).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_drop_path_and_dropout_train_vs_eval():
    model = small_model(drop_path_rate=0.5, drop_rate=0.2, attn_drop_rate=0.2)
    video = torch.randn(4, 4, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        a, b = model(video), model(video)
        torch.testing.assert_close(a, b)  # eval is deterministic
        model.train()
        c, d = model(video), model(video)
    assert not torch.allclose(c, d)
    rates = [blk.drop_path.p for blk in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5)


def test_presets():
    assert set(tf.list_models()) >= {
        "timesformer_base",
        "timesformer_hr",
        "timesformer_l",
        "timesformer_tiny",
        "lucidrains",
    }
    base = tf.get_config("timesformer_base")
    assert (base.num_frames, base.image_size, base.patch_size, base.dim, base.depth, base.heads) == (
        8,
        224,
        16,
        768,
        12,
        12,
    )
    assert base.attention == "divided" and base.pos_emb == "learned"
    assert (tf.get_config("timesformer_hr").num_frames, tf.get_config("timesformer_hr").image_size) == (16, 448)
    assert tf.get_config("timesformer_l").num_frames == 96
    seed = tf.get_config("lucidrains")
    assert (seed.mlp, seed.qkv_bias, seed.temporal_fc, seed.cls_attention, seed.pos_emb) == (
        "geglu",
        False,
        False,
        "global",
        "rotary",
    )
    model = tf.create_model("timesformer_tiny", num_classes=3)
    assert model.config.num_classes == 3
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 8, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize(
    "scheme,hf_type", [("divided", "divided_space_time"), ("joint", "joint_space_time"), ("space", "space_only")]
)
def test_parameter_count_equals_hugging_face(scheme, hf_type):
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    hc = TimesformerConfig(
        image_size=32,
        patch_size=8,
        num_frames=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=5,
        attention_type=hf_type,
    )
    ours = tf.TimeSformer(small_config(attention=scheme))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(TimesformerForVideoClassification(hc))


def test_scheme_parameter_counts_follow_the_paper():
    """Table 1: S and ST share ViT's parameters, T+S and L+G add one attention (+fc), T+W+H two."""
    counts = {s: sum(p.numel() for p in tf.TimeSformer(small_config(attention=s)).parameters()) for s in SCHEMES}
    assert counts["divided"] == counts["sparse"] > counts["joint"]
    assert counts["axial"] - counts["divided"] == counts["divided"] - counts["joint"]  # one more attention + fc
    assert counts["joint"] - counts["space"] == 4 * 32  # the time table


def test_fresh_divided_model_starts_as_space_only():
    """temporal_fc starts at zero (official), so the temporal branch adds nothing at step 0."""
    model = tf.TimeSformer(small_config()).eval()
    for blk in model.blocks:
        assert blk.temporal_fc.weight.abs().sum() == 0 and blk.temporal_fc.bias.abs().sum() == 0
    space = tf.TimeSformer(small_config(attention="space", cls_attention="average")).eval()
    state = {k: v for k, v in model.state_dict().items() if "temporal" not in k and k != "time_embed"}
    space.load_state_dict(state)
    video = torch.randn(1, 4, 3, 32, 32).expand(1, 4, 3, 32, 32).clone()
    video[:] = video[:, :1]  # identical frames: divided and per-frame space-only agree exactly
    with torch.no_grad():
        torch.testing.assert_close(model(video), space(video), atol=1e-5, rtol=1e-5)


def test_api_helpers():
    model = small_model()
    assert model.no_weight_decay() == {"cls_token", "pos_embed", "time_embed"}
    model.reset_classifier(9, labels=tuple(str(i) for i in range(9)))
    assert model.config.num_classes == 9 and model.head.out_features == 9
    with torch.no_grad():
        assert model(torch.randn(1, 4, 3, 32, 32)).shape == (1, 9)


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_gelu_linear_matches_autograd(autocast):
    """The memory-saving GELU+fc2 function (the speed layer's FusedMlp) gives autograd's gradients (fp32 exactly,
    bf16 autocast closely), on the same parameters."""
    from timesformer.fused import FusedMlp
    from timesformer.model.layers import Mlp

    torch.manual_seed(0)
    mlp = Mlp(dim=16, hidden=64)
    fused_mlp = FusedMlp.adopt(mlp)
    assert dict(fused_mlp.named_parameters()) == dict(mlp.named_parameters())
    x = torch.randn(3, 5, 16, requires_grad=True)
    results = []
    for fused in (True, False):
        mlp.zero_grad()
        x.grad = None
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            out = fused_mlp(x) if fused else mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x)))
        out.float().square().sum().backward()
        results.append((out.float(), x.grad.clone(), mlp.fc2.weight.grad.clone(), mlp.fc1.weight.grad.clone()))
    tol = dict(atol=5e-2, rtol=5e-2) if autocast else dict(atol=1e-5, rtol=1e-5)
    for fused, plain in zip(*results):
        torch.testing.assert_close(fused, plain, **tol)
