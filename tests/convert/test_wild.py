"""Checkpoints other people hold: mmaction2's real key names and normalisation, the official files' recorded
config, DDP / Lightning / EMA wrappers, and code pickled inside torch's zip format."""

import logging
import os

import pytest
import torch

import timesformer as tf
from timesformer.cli import main

DIM, DEPTH, FRAMES, IMAGE, PATCH, CLASSES = 32, 2, 4, 32, 16, 5


def mmaction_state(attention: str, seed: int = 0) -> tuple[dict, dict]:
    """Random weights under mmaction2's own key names (a Recognizer3D: ``backbone.`` + ``cls_head.``), as
    ``mmaction/models/backbones/timesformer.py`` and mmcv's transformer bricks build them -- and the same tensors
    under the official facebookresearch names, what those modules compute. For divided attention the norms live
    inside ``attentions.0`` (temporal, with ``temporal_fc``), ``attentions.1`` (spatial) and ``ffns.0``; for
    joint and space-only in ``norms.0`` / ``norms.1``; space-only has no ``time_embed``."""
    g = torch.Generator().manual_seed(seed)
    mm, official = {}, {}

    def put(theirs, ours, *shape, one=False):
        mm[theirs] = official[ours] = (1.0 if one else 0.0) + torch.randn(*shape, generator=g) * 0.2

    def norm(theirs, ours):
        put(f"{theirs}.weight", f"{ours}.weight", DIM, one=True)
        put(f"{theirs}.bias", f"{ours}.bias", DIM)

    def linear(theirs, ours, out, inp):
        put(f"{theirs}.weight", f"{ours}.weight", out, inp)
        put(f"{theirs}.bias", f"{ours}.bias", out)

    def mha(theirs, ours):  # nn.MultiheadAttention: q, k, v stacked in in_proj, as the official qkv
        put(f"{theirs}.in_proj_weight", f"{ours}.qkv.weight", 3 * DIM, DIM)
        put(f"{theirs}.in_proj_bias", f"{ours}.qkv.bias", 3 * DIM)
        linear(f"{theirs}.out_proj", f"{ours}.proj", DIM, DIM)

    put("backbone.cls_token", "cls_token", 1, 1, DIM)
    put("backbone.pos_embed", "pos_embed", 1, (IMAGE // PATCH) ** 2 + 1, DIM)
    if attention != "space_only":
        put("backbone.time_embed", "time_embed", 1, FRAMES, DIM)
    put("backbone.patch_embed.projection.weight", "patch_embed.proj.weight", DIM, 3, PATCH, PATCH)
    put("backbone.patch_embed.projection.bias", "patch_embed.proj.bias", DIM)
    norm("backbone.norm", "norm")
    for i in range(DEPTH):
        p, b = f"backbone.transformer_layers.layers.{i}", f"blocks.{i}"
        if attention == "divided_space_time":
            norm(f"{p}.attentions.0.norm", f"{b}.temporal_norm1")
            mha(f"{p}.attentions.0.attn", f"{b}.temporal_attn")
            linear(f"{p}.attentions.0.temporal_fc", f"{b}.temporal_fc", DIM, DIM)
            norm(f"{p}.attentions.1.norm", f"{b}.norm1")
            mha(f"{p}.attentions.1.attn", f"{b}.attn")
            norm(f"{p}.ffns.0.norm", f"{b}.norm2")
        else:
            norm(f"{p}.norms.0", f"{b}.norm1")
            mha(f"{p}.attentions.0.attn", f"{b}.attn")
            norm(f"{p}.norms.1", f"{b}.norm2")
        linear(f"{p}.ffns.0.layers.0.0", f"{b}.mlp.fc1", 4 * DIM, DIM)
        linear(f"{p}.ffns.0.layers.1", f"{b}.mlp.fc2", DIM, 4 * DIM)
    linear("cls_head.fc_cls", "head", CLASSES, DIM)
    return mm, official


@pytest.mark.parametrize("attention", ["divided_space_time", "joint_space_time", "space_only"])
def test_mmaction2_real_key_names_load_with_its_normalisation(tmp_path, attention):
    mm, official = mmaction_state(attention)
    torch.save({"meta": {"epoch": 15, "mmaction_version": "1.2.0"}, "state_dict": mm}, tmp_path / "mm.pth")
    torch.save({"model_state": {f"model.{k}": v for k, v in official.items()}, "epoch": 15}, tmp_path / "off.pyth")
    ours, reference = (
        tf.load_pretrained(tmp_path / "mm.pth", heads=2),
        tf.load_pretrained(tmp_path / "off.pyth", heads=2),
    )
    assert (
        ours.config.attention
        == {"divided_space_time": "divided", "joint_space_time": "joint", "space_only": "space"}[attention]
    )
    # mmaction2 normalises 0-255 pixels with 127.5 / 127.5: 0.5 / 0.5 here; the official default stays
    assert (ours.config.mean, ours.config.std) == ((0.5,) * 3, (0.5,) * 3)
    assert (reference.config.mean, reference.config.std) == ((0.45,) * 3, (0.225,) * 3)
    video = torch.randn(2, FRAMES, 3, IMAGE, IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(ours(video), reference(video), atol=1e-5, rtol=1e-5)
    assert main(["convert", str(tmp_path / "mm.pth"), str(tmp_path / "native"), "--heads", "2"]) == 0
    native = tf.load_pretrained(tmp_path / "native")
    assert (native.config.mean, native.config.std) == ((0.5,) * 3, (0.5,) * 3)


def test_official_files_record_their_normalisation_and_sampling(tmp_path):
    _, official = mmaction_state("divided_space_time")
    cfg = (
        "TRAIN:\n  DATASET: ssv2\nDATA:\n  NUM_FRAMES: 8\n  SAMPLING_RATE: 4\n  TARGET_FPS: 25\n"
        "  MEAN: [0.5, 0.5, 0.5]\n  STD: [0.5, 0.5, 0.5]\n"
    )
    torch.save({"model_state": {f"model.{k}": v for k, v in official.items()}, "cfg": cfg}, tmp_path / "ssv2.pyth")
    c = tf.load_pretrained(tmp_path / "ssv2.pyth", heads=2).config
    assert (c.mean, c.std, c.sampling, c.fps) == ((0.5,) * 3, (0.5,) * 3, "segment", 25.0)
    torch.save(
        {"model_state": {f"model.{k}": v for k, v in official.items()}, "cfg": cfg.replace("ssv2", "kinetics")},
        tmp_path / "k400.pyth",
    )
    c = tf.load_pretrained(tmp_path / "k400.pyth", heads=2).config
    assert (c.sampling, c.sampling_rate) == ("dense", 4)


def test_wrapped_state_dicts_load(tmp_path, caplog):
    mm, official = mmaction_state("divided_space_time")
    reference = tf.load_pretrained(_save(tmp_path / "plain.pth", official), heads=2)
    ema = {k: v + 0.01 for k, v in official.items()}
    files = {
        "ddp.pth": {f"module.{k}": v for k, v in official.items()},  # saved from a DDP-wrapped model
        "compiled.pth": {f"_orig_mod.{k}": v for k, v in official.items()},  # from torch.compile
        "lightning.ckpt": {
            "state_dict": {f"net.{k}": v for k, v in official.items()},
            "epoch": 3,
            "global_step": 300,
            "pytorch-lightning_version": "2.4.0",
        },
        "timm.pth.tar": {
            "state_dict": official,
            "state_dict_ema": {f"module.{k}": v for k, v in ema.items()},
            "epoch": 30,
            "arch": "timesformer",
        },
        "model_ema.pth": {"model": official, "model_ema": ema, "epoch": 30},
    }
    video = torch.randn(2, FRAMES, 3, IMAGE, IMAGE)
    with torch.no_grad():
        expected = reference(video)
        said = {}
        for name, obj in files.items():
            with caplog.at_level(logging.WARNING, logger="timesformer"):
                caplog.clear()
                model = tf.load_pretrained(_save(tmp_path / name, obj), heads=2)
                said[name] = caplog.text
            torch.testing.assert_close(model(video), expected, atol=0, rtol=0, msg=name)
        assert "holds 2 state dicts (state_dict, state_dict_ema): loading 'state_dict'" in said["timm.pth.tar"]
        assert "holds 2 state dicts (model, model_ema): loading 'model'" in said["model_ema.pth"]
        assert "dropped the key prefix 'net.'" in said["lightning.ckpt"] and not said["ddp.pth"]
        for name, entry in (("timm.pth.tar", "state_dict_ema"), ("model_ema.pth", "model_ema")):
            ema_model = tf.load_pretrained(tmp_path / name, entry=entry, heads=2)
            torch.testing.assert_close(ema_model.blocks[0].norm1.weight, ema["blocks.0.norm1.weight"])
    # mmengine's EMA hook swaps at saving: state_dict holds the averaged weights, ema_state_dict (the averaged
    # model's own state dict, `module.` prefixed, with its `steps` counter) the raw ones
    _save(
        tmp_path / "mmengine.pth",
        {"state_dict": mm, "ema_state_dict": {"steps": torch.tensor(100), **{f"module.{k}": v for k, v in mm.items()}}},
    )
    assert (
        main(
            [
                "convert",
                str(tmp_path / "mmengine.pth"),
                str(tmp_path / "ema"),
                "--heads",
                "2",
                "--entry",
                "ema_state_dict",
            ]
        )
        == 0
    )
    with pytest.raises(
        ValueError, match=r"no state dict under 'model_ema'; it holds \['state_dict', 'ema_state_dict'\]"
    ):
        tf.load_pretrained(tmp_path / "mmengine.pth", entry="model_ema", heads=2)


def _save(path, obj):
    torch.save(obj, path)
    return path


class RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [True, False])
def test_code_pickled_in_a_checkpoint_is_refused_and_named(tmp_path, zipped):
    """torch.save's zip format (data.pkl inside) and a raw pickle alike."""
    import pickle

    _, official = mmaction_state("divided_space_time")
    marker = tmp_path / "ran"
    obj = {"model_state": official, "extra": RunsAShellCommand(marker)}
    if zipped:
        torch.save(obj, tmp_path / "evil.pth")
    else:
        (tmp_path / "evil.pth").write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(
        ValueError,
        match=r"evil.pth: refused: the file holds pickled Python objects beyond tensors "
        r"\((posix|os|nt)\.system\)",
    ):
        tf.load_pretrained(tmp_path / "evil.pth")
    assert not marker.exists()
