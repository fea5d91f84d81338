"""Official, mmaction2 and native formats; errors for bad files; never unpickling code."""

import json
import pickle

import pytest
import torch

import timesformer as tf
from timesformer.convert.hf import from_hf
from timesformer.convert.mmaction import to_mmaction
from timesformer.convert.official import to_official

from ..conftest import small_model
from .test_hf import hf_logits, hf_model


def official_checkpoint(hf):
    """An official-format file built from an HF model: HF keys renamed to the official ones (`model.` prefix),
    wrapped as the official .pyth files are."""
    return {
        "model_state": to_official(from_hf(hf.state_dict())),
        "optimizer_state": {},
        "epoch": 15,
        "cfg": "MODEL:\n  ARCH: vit\n",
    }


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
def test_official_checkpoint(tmp_path, attention_type):
    hf = hf_model(attention_type, num_attention_heads=2)
    path = tmp_path / "TimeSformer_divST_8x32_224_K400.pyth"
    torch.save(official_checkpoint(hf), path)
    ours = tf.load_pretrained(path, heads=2)  # heads can't be read from shapes
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(video), hf_logits(hf, video), atol=1e-4, rtol=1e-4)


def test_official_config_from_shapes():
    ckpt = official_checkpoint(hf_model("divided_space_time", num_frames=6, image_size=48, patch_size=16, num_labels=9))
    from timesformer.convert.official import from_official, infer_config

    cfg = infer_config(from_official(ckpt["model_state"]), heads=2)
    assert (cfg.num_frames, cfg.image_size, cfg.patch_size, cfg.dim, cfg.depth, cfg.num_classes, cfg.attention) == (
        6,
        48,
        16,
        32,
        2,
        9,
        "divided",
    )


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time"])
def test_mmaction2_checkpoint(tmp_path, attention_type):
    hf = hf_model(attention_type)
    state = to_mmaction(from_hf(hf.state_dict()))
    assert any(".attn.in_proj_weight" in k for k in state)
    path = tmp_path / "timesformer_mm.pth"
    torch.save({"meta": {"epoch": 15}, "state_dict": state}, path)
    ours = tf.load_pretrained(path, heads=2)
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(video), hf_logits(hf, video), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(attention="sparse", pos_emb="rotary"),
        dict(attention="axial"),
        dict(pos_emb="rotary", shift_tokens=True, cls_attention="global"),
    ],
)
def test_native_round_trip_any_config(tmp_path, overrides):
    model = small_model(**overrides)
    tf.save_pretrained(model, tmp_path)
    back = tf.load_pretrained(tmp_path)
    assert back.config == model.config
    video = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(video), model(video))


def test_labels_file_beside_checkpoint(tmp_path):
    hf = hf_model()
    torch.save(official_checkpoint(hf), tmp_path / "ckpt.pyth")
    (tmp_path / "labels.txt").write_text("\n".join(f"class {i}" for i in range(5)) + "\n")
    assert tf.load_pretrained(tmp_path / "ckpt.pyth", heads=2).config.labels[3] == "class 3"


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refuses_pickled_code(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model_state": {"x": Evil()}}, f)
    with pytest.raises(ValueError, match="refused: the file holds pickled Python objects"):
        tf.load_pretrained(path)
    assert "pwned" not in capsys.readouterr().out


def test_bad_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(official_checkpoint(hf_model()), good)
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "noise.safetensors").write_bytes(bytes(range(256)) * 10)
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "unknown.pth")
    cases = {
        "truncated.pth": "truncated.pth: not a readable checkpoint",
        "empty.pth": "empty.pth: the file is empty",
        "noise.safetensors": "noise.safetensors: not a readable safetensors file",
        "unknown.pth": r"unknown.pth: unrecognised checkpoint format; keys start \['foo.weight'\]",
        "missing.pth": "missing.pth: no such file",
    }
    for name, match in cases.items():
        with pytest.raises(ValueError, match=match):
            tf.load_pretrained(tmp_path / name)


def test_shapes_contradicting_overrides(tmp_path):
    path = tmp_path / "ckpt.pyth"
    torch.save(official_checkpoint(hf_model()), path)
    with pytest.raises(ValueError, match=r"override dim=64 contradicts the checkpoint, whose shapes say 32"):
        tf.load_pretrained(path, heads=2, dim=64)
    with pytest.raises(ValueError, match=r"heads 3 x dim_head 10 must equal the checkpoint's dim 32"):
        tf.load_pretrained(path, heads=3)


def test_strict_load_names_missing_and_unexpected_keys(tmp_path):
    hf = hf_model()
    state = to_official(from_hf(hf.state_dict()))
    del state["model.blocks.1.mlp.fc2.bias"]
    state["model.blocks.0.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "ckpt.pth")
    with pytest.raises(
        ValueError,
        match=r"missing keys \['blocks.1.mlp.fc2.bias'\]; unexpected keys "
        r"\['blocks.0.extra.weight'\]",
    ):
        tf.load_pretrained(tmp_path / "ckpt.pth", heads=2)


def test_native_config_errors(tmp_path):
    tf.save_pretrained(small_model(), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["config"]["layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json: unknown config key\(s\) \['layers'\]"):
        tf.load_pretrained(tmp_path)


def test_native_files_saved_before_the_protocol_was_recorded_keep_the_old_sampling(tmp_path, caplog):
    """They were trained and run dense, every 8th frame at 30 fps (training's and the commands' defaults then)."""
    import logging

    tf.save_pretrained(small_model(), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key in ("sampling", "sampling_rate", "fps"):
        del cfg["config"][key]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING, logger="timesformer"):
        c = tf.load_pretrained(tmp_path).config
    assert (c.sampling, c.sampling_rate, c.fps) == ("dense", 8, 30.0) and "older version" in caplog.text


def test_create_model_with_pretrained_loads_the_presets_weights_in_timms_style(tmp_path):
    """``create_model(name, pretrained=src)``: the checkpoint's weights (equal logits); ``num_classes`` other than the
    checkpoint's gives a new head on the same backbone; another preset's checkpoint is an error naming the fields."""
    import timesformer as tf

    torch.manual_seed(0)
    source = tf.create_model("timesformer_tiny", num_classes=5).eval()
    tf.save_pretrained(source, tmp_path / "tiny")
    video = torch.randn(2, 8, 3, 32, 32)
    loaded = tf.create_model("timesformer_tiny", pretrained=tmp_path / "tiny")
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), source(video))
    tuned = tf.create_model("timesformer_tiny", pretrained=tmp_path / "tiny", num_classes=7, drop_path_rate=0.1)
    assert tuned.config.num_classes == 7 and tuned.head.out_features == 7 and tuned.config.drop_path_rate == 0.1
    assert torch.equal(tuned.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match=r"is not a timesformer_base: dim: 768 in timesformer_base, 128 in .*depth"):
        tf.create_model("timesformer_base", pretrained=tmp_path / "tiny")
