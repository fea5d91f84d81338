"""Hugging Face Timesformer: folders load with equal logits; export_hf round-trips into transformers."""

import json

import pytest
import torch

import timesformer as tf

transformers = pytest.importorskip("transformers")
from transformers import TimesformerConfig, TimesformerForVideoClassification  # noqa: E402

HF_TYPES = {"divided": "divided_space_time", "joint": "joint_space_time", "space": "space_only"}


def hf_model(attention_type="divided_space_time", seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(
        image_size=32,
        patch_size=8,
        num_frames=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=5,
        attention_type=attention_type,
    )
    model = TimesformerForVideoClassification(TimesformerConfig(**{**base, **kw})).eval()
    with torch.no_grad():  # make the zero-initialised temporal parts non-trivial
        for name, p in model.named_parameters():
            if "time_embeddings" in name or "temporal_dense" in name:
                p.normal_(std=0.1)
    return model


def hf_logits(model, video):
    """HF's logits; for space_only, HF classifies each frame, so we compare with the official pooling: the
    pre-norm hidden states averaged over frames, then norm and head (what our space-only computes)."""
    with torch.no_grad():
        if model.config.attention_type != "space_only":
            return model(video).logits
        b, t = video.shape[:2]
        hidden = model.timesformer(video, output_hidden_states=True).hidden_states[-1]  # (b t) (1+n) d
        pooled = hidden.unflatten(0, (b, t)).mean(1)[:, 0]
        return model.classifier(model.timesformer.layernorm(pooled))


@pytest.mark.parametrize("attention_type", list(HF_TYPES.values()))
@pytest.mark.parametrize(
    "kw", [{}, dict(num_frames=6, image_size=48, patch_size=16, num_labels=11, num_attention_heads=4)]
)
def test_hf_folder_loads_with_equal_logits(tmp_path, attention_type, kw):
    hf = hf_model(attention_type, **kw)
    hf.save_pretrained(tmp_path)
    ours = tf.load_pretrained(tmp_path)
    c = hf.config
    assert ours.config.attention == {v: k for k, v in HF_TYPES.items()}[attention_type]
    assert ours.config.labels == tuple(c.id2label[i] for i in range(c.num_labels))
    video = torch.randn(2, c.num_frames, 3, c.image_size, c.image_size)
    with torch.no_grad():
        torch.testing.assert_close(ours(video), hf_logits(hf, video), atol=1e-4, rtol=1e-4)


def test_hf_other_frame_count_where_hf_accepts_it(tmp_path):
    """HF reshapes with config.num_frames, so only its space-only path accepts another T; compare there."""
    hf = hf_model("space_only")
    hf.save_pretrained(tmp_path)
    ours = tf.load_pretrained(tmp_path)
    video = torch.randn(2, 7, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(video), hf_logits(hf, video), atol=1e-4, rtol=1e-4)


def test_preprocessor_config_travels(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.45] * 3, "image_std": [0.225] * 3}))
    cfg = tf.load_pretrained(tmp_path).config
    assert cfg.mean == (0.45,) * 3 and cfg.std == (0.225,) * 3


@pytest.mark.parametrize("attention", ["divided", "joint", "space"])
def test_export_hf_round_trip(tmp_path, attention):
    from ..conftest import small_model

    ours = small_model(attention=attention, labels=tuple("abcde"))
    tf.export_hf(ours, tmp_path)
    hf = TimesformerForVideoClassification.from_pretrained(tmp_path).eval()
    assert hf.config.id2label[2] == "c"
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(hf, video), ours(video), atol=1e-5, rtol=1e-5)
    back = tf.load_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(back(video), ours(video))


def test_export_hf_refuses_what_hf_cannot_hold(tmp_path):
    from ..conftest import small_model

    with pytest.raises(ValueError, match=r"pos_emb='rotary' \(HF needs 'learned'\)"):
        tf.export_hf(small_model(pos_emb="rotary"), tmp_path)
    with pytest.raises(ValueError, match=r"attention='axial'"):
        tf.export_hf(small_model(attention="axial"), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_hub_name_goes_through_the_download_boundary(tmp_path, monkeypatch):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append(repo_id)
        return str(tmp_path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = tf.load_pretrained("facebook/timesformer-base-finetuned-k400")
    assert calls == ["facebook/timesformer-base-finetuned-k400"]
    assert model.config.num_classes == 5


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time"])
def test_stochastic_depth_draws_as_the_official_code(tmp_path, attention_type):
    """HF draws drop path as the official code does -- a mask per branch, per row of the tensor each branch
    sees: (clip, patch position) for temporal attention, (clip, frame) for spatial attention, with the cls
    copies dropped before averaging, the clip for the MLP. Drawing the same rows in the same order from the same
    seed, both models give the same training-mode logits."""
    from transformers.models.timesformer.modeling_timesformer import TimesformerDropPath

    hf = hf_model(attention_type, num_hidden_layers=3)
    hf.save_pretrained(tmp_path)
    # transformers 5 validates drop_path_rate as an int: give its layers their rates (0, 0.25, 0.5) directly
    for layer, rate in zip(hf.timesformer.encoder.layer, torch.linspace(0, 0.5, 3).tolist()):
        layer.drop_path = TimesformerDropPath(rate) if rate > 0 else torch.nn.Identity()
    ours = tf.load_pretrained(tmp_path, drop_path_rate=0.5)
    hf.train()
    ours.train()
    video = torch.randn(4, 4, 3, 32, 32)
    for seed in range(3):
        torch.manual_seed(seed)
        expected = hf(video).logits
        torch.manual_seed(seed)
        torch.testing.assert_close(ours(video), expected, atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    assert not torch.allclose(ours(video), ours.eval()(video), atol=1e-3)  # it does drop something


def test_stochastic_depth_rows_for_space_only(monkeypatch):
    """Official space-only works on one row per frame: both branches drop per (clip, frame)."""
    from timesformer.model.layers import DropPath

    from ..conftest import small_model

    rows, real = [], DropPath.sample

    def record(self, n, like):
        rows.append(n)
        return real(self, n, like)

    monkeypatch.setattr(DropPath, "sample", record)
    small_model(attention="space", drop_path_rate=0.5, depth=1).train()(torch.randn(2, 4, 3, 32, 32))
    small_model(attention="divided", drop_path_rate=0.5, depth=1).train()(torch.randn(2, 4, 3, 32, 32))
    assert rows == [2 * 4, 2 * 4] + [2 * 16, 2 * 4, 2]  # space: frames, frames; divided: positions, frames, clips


def test_the_sampling_protocol_survives_hf_export_and_unrecorded_files_get_the_official_one(tmp_path):
    from ..conftest import small_model

    ours = small_model(attention="divided", labels=tuple("abcde"))
    ours.config = ours.config.replace(sampling="segment", sampling_rate=4, fps=25.0)
    tf.export_hf(ours, tmp_path / "exported")
    c = tf.load_pretrained(tmp_path / "exported").config
    assert (c.sampling, c.sampling_rate, c.fps) == ("segment", 4, 25.0)
    # an HF folder that records nothing: the official Kinetics protocol for its frame count
    for frames, rate in ((8, 32), (16, 16)):
        hf_model(num_frames=frames).save_pretrained(tmp_path / f"hf{frames}")
        c = tf.load_pretrained(tmp_path / f"hf{frames}").config
        assert (c.sampling, c.sampling_rate, c.fps) == ("dense", rate, 30.0)
    hf_model(num_labels=174).save_pretrained(tmp_path / "ssv2")
    assert tf.load_pretrained(tmp_path / "ssv2").config.sampling == "segment"
