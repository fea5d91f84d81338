"""Image-model initialisation: T identical frames give the image ViT's features for that frame."""

import pytest
import torch

import timesformer as tf
from timesformer.convert.vit import vit_to_timm

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("attention", ["divided", "joint", "space", "sparse", "axial"])
def test_identical_frames_give_the_image_features(attention, tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            layer_norm_eps=1e-6,
        ),
        add_pooling_layer=False,
    ).eval()
    model = tf.TimeSformer(
        tf.TimeSformerConfig(
            num_classes=3,
            num_frames=4,
            image_size=32,
            patch_size=8,
            dim=32,
            depth=2,
            heads=2,
            dim_head=16,
            attention=attention,
        )
    )
    tf.init_from_image_vit(model, vit.state_dict())
    model.eval()
    if attention == "divided":
        blk = model.blocks[0]
        torch.testing.assert_close(blk.temporal_attn.qkv.weight, blk.attn.qkv.weight)
        assert blk.temporal_fc.weight.abs().sum() == 0 and model.time_embed.abs().sum() == 0
    frame = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        image_features = vit(frame).last_hidden_state[:, 0]  # final layernorm, cls token
        video_features = model.forward_features(frame.unsqueeze(1).expand(2, 4, 3, 32, 32))
    if attention in ("divided", "space"):  # exactly the image model, frame by frame
        torch.testing.assert_close(video_features, image_features, atol=1e-5, rtol=1e-5)
    else:  # joint/sparse/axial attend across frames from the first layer: finite, and not yet trained
        assert torch.isfinite(video_features).all()


def test_timm_and_hf_naming_agree():
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        add_pooling_layer=False,
    )
    timm = vit_to_timm(vit.state_dict())
    assert timm["blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert vit_to_timm(timm).keys() == timm.keys()  # timm naming passes through


def test_mmcv_naming_of_mmaction2s_vit_file_initialises_the_same_model():
    """mmaction2 ships vit_base_patch16_224.pth in mmcv naming (``transformer_layers.layers.N...``)."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            layer_norm_eps=1e-6,
        ),
        add_pooling_layer=False,
    )
    timm = vit_to_timm(vit.state_dict())
    names = {
        "norm1": "norms.0",
        "attn.qkv.weight": "attentions.0.attn.in_proj_weight",
        "attn.qkv.bias": "attentions.0.attn.in_proj_bias",
        "attn.proj.weight": "attentions.0.attn.out_proj.weight",
        "attn.proj.bias": "attentions.0.attn.out_proj.bias",
        "norm2": "norms.1",
        "mlp.fc1": "ffns.0.layers.0.0",
        "mlp.fc2": "ffns.0.layers.1",
    }
    mmcv = {}
    for key, value in timm.items():
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            part = next(p for p in sorted(names, key=len, reverse=True) if rest.startswith(p))
            key = f"transformer_layers.layers.{i}.{names[part]}{rest[len(part) :]}"
        mmcv[key.replace("patch_embed.proj.", "patch_embed.projection.")] = value
    assert "transformer_layers.layers.1.ffns.0.layers.0.0.weight" in mmcv and "patch_embed.projection.bias" in mmcv
    config = tf.TimeSformerConfig(
        num_classes=3, num_frames=4, image_size=32, patch_size=8, dim=32, depth=2, heads=2, dim_head=16
    )
    torch.manual_seed(1)
    a = tf.init_from_image_vit(tf.TimeSformer(config), timm)
    torch.manual_seed(1)
    b = tf.init_from_image_vit(tf.TimeSformer(config), mmcv)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, atol=0, rtol=0)
