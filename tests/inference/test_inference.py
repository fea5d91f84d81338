"""Using a model on real videos the tests encode: predict, timelines, features, explanations, export."""

import json

import pytest
import torch

import timesformer as tf
from timesformer.cli import main
from timesformer.inference import Predictor
from timesformer.inference.explain import attention_rollout

from ..conftest import small_model
from ..data.videos import write_video

pytest.importorskip("av")

TINY = dict(image_size=32, patch_size=8, dim=32, depth=2, heads=2, dim_head=16, num_frames=4)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = tf.create_model("timesformer_tiny", num_classes=3, labels=("cat", "dog", "eel"), **TINY)
    tf.save_pretrained(model, root / "named")
    tf.save_pretrained(tf.create_model("timesformer_tiny", num_classes=3, **TINY), root / "anonymous")
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "a.mp4", 90, fps=30, size=64)  # 3 s
    write_video(root / "b.webm", 45, fps=30, size=64, codec="libvpx-vp9")  # 1.5 s
    (root / "notes.mp4").write_text("this is not a video")
    return root


def test_predict_table_json_and_bad_file(ckpt, videos, capsys):
    rc = main(
        [
            "predict",
            str(videos / "a.mp4"),
            str(videos / "notes.mp4"),
            str(videos / "b.webm"),
            "--checkpoint",
            str(ckpt / "named"),
            "--topk",
            "2",
            "--views",
            "2x3",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"].split("/")[-1] for r in rows] == ["a.mp4", "b.webm"]  # the bad file skipped, the rest done
    assert all(len(r["top"]) == 2 and r["top"][0]["class"] in ("cat", "dog", "eel") for r in rows)
    assert abs(sum(e["prob"] for e in rows[0]["top"])) <= 1.0 + 1e-6
    assert "skipped" in err and "notes.mp4" in err


def test_predict_globs_folders_and_unnamed_classes(ckpt, videos, capsys):
    assert main(["predict", str(videos / "*.mp4"), "--checkpoint", str(ckpt / "anonymous"), "--topk", "1"]) == 0
    out, err = capsys.readouterr()
    assert "names no classes; printing class indices" in err
    assert "a.mp4" in out and out.strip().splitlines()[1].strip().split()[-1] in ("0", "1", "2")


def test_multi_view_logits_are_the_mean_of_views(ckpt, videos):
    model = tf.load_pretrained(ckpt / "named")
    predictor = Predictor(model, clips=2, crops=3)
    views, masks = predictor.views(videos / "a.mp4")
    assert views.shape == (6, 4, 3, 32, 32)
    with torch.no_grad():
        expected = model(views, None if masks.all() else masks).mean(0)
    torch.testing.assert_close(predictor.logits(videos / "a.mp4"), expected, atol=1e-5, rtol=1e-5)


def test_timeline_covers_the_video(ckpt, videos, tmp_path, capsys):
    assert (
        main(
            [
                "predict",
                str(videos / "a.mp4"),
                "--checkpoint",
                str(ckpt / "named"),
                "--window",
                "1",
                "--stride",
                "0.75",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    tl = json.loads((tmp_path / "a.timeline.json").read_text())
    starts = [e["start"] for e in tl["entries"]]
    assert (
        starts[0] == 0
        and tl["entries"][-1]["end"] == pytest.approx(tl["duration"])
        and tl["duration"] == pytest.approx(3.0, abs=0.05)
    )
    assert all(b - a <= 0.75 + 1e-9 for a, b in zip(starts, starts[1:]))
    assert (tmp_path / "a.timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a video shorter than one window still gets one prediction
    predictor = Predictor(tf.load_pretrained(ckpt / "named"))
    short = predictor.timeline(videos / "b.webm", window=5, stride=2)
    assert len(short["entries"]) == 1
    with pytest.raises(ValueError, match="must be positive seconds"):  # the settings, before the file is opened
        predictor.timeline(videos / "no-such.mp4", window=0, stride=1)


def test_extract_feature_shapes(ckpt, videos, tmp_path, capsys):
    assert (
        main(
            [
                "extract",
                str(videos / "a.mp4"),
                "--checkpoint",
                str(ckpt / "named"),
                "--out",
                str(tmp_path),
                "--tokens",
                "frames",
                "patches",
            ]
        )
        == 0
    )
    import numpy as np

    assert np.load(tmp_path / "a.pooled.npy").shape == (32,)
    assert np.load(tmp_path / "a.frames.npy").shape == (4, 32)
    assert np.load(tmp_path / "a.patches.npy").shape == (1 + 4 * 16, 32)
    assert (
        main(
            [
                "extract",
                str(videos / "b.webm"),
                "--checkpoint",
                str(ckpt / "named"),
                "--out",
                str(tmp_path),
                "--format",
                "safetensors",
            ]
        )
        == 0
    )
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "b.safetensors"))["pooled"].shape == (32,)


def test_extract_decodes_each_file_and_runs_the_model_once_for_every_token_kind(ckpt, videos, tmp_path, monkeypatch):
    """``extract --tokens frames patches``: one decode and one model call per video (they were one per kind), and
    the same features as one ``Predictor.features`` call per kind."""
    from timesformer.inference import predict

    decoded, calls = [], []
    decode, outputs = predict.ViewDecoder.__call__, predict.Predictor.outputs
    monkeypatch.setattr(
        predict.ViewDecoder, "__call__", lambda self, path, *a: decoded.append(path) or decode(self, path, *a)
    )
    monkeypatch.setattr(predict.Predictor, "outputs", lambda self, *a, **k: calls.append(1) or outputs(self, *a, **k))
    files = [videos / "a.mp4", videos / "b.webm"]
    args = ["--checkpoint", str(ckpt / "named"), "--out", str(tmp_path), "--tokens", "frames", "patches"]
    assert main(["extract", *map(str, files), *args]) == 0
    assert [str(p) for p in decoded] == [str(f) for f in files] and len(calls) == 2
    import numpy as np

    predictor = Predictor(tf.load_pretrained(ckpt / "named"))
    for f in files:
        for kind in ("pooled", "frames", "patches"):
            expected = predictor.features(f, kind).numpy()
            np.testing.assert_allclose(np.load(tmp_path / f"{f.stem}.{kind}.npy"), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(cls_attention="average", temporal_fc=True),
        dict(attention="space", cls_attention="average"),
        dict(attention="sparse"),
        dict(attention="axial"),
        dict(attention="joint"),
    ],
)
def test_rollout_maps_sum_to_one_per_frame(overrides):
    torch.manual_seed(0)
    model = tf.create_model("timesformer_tiny", num_classes=3, **{**TINY, **overrides})
    result = attention_rollout(model, torch.randn(1, 4, 3, 32, 32))
    maps = result["maps"]
    assert maps.shape == (4, 4, 4) and (maps >= 0).all()
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(4))
    torch.testing.assert_close(result["frame_importance"].sum(), torch.tensor(1.0))


def test_rollout_logits_equal_the_forward_pass():
    torch.manual_seed(0)
    model = tf.create_model("timesformer_tiny", num_classes=3, **TINY).eval()
    video = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(attention_rollout(model, video)["logits"], model(video)[0], atol=1e-5, rtol=1e-5)


def test_explain_writes_png_gif_and_json(ckpt, videos, tmp_path, capsys):
    assert (
        main(
            [
                "explain",
                str(videos / "a.mp4"),
                "--checkpoint",
                str(ckpt / "named"),
                "--out",
                str(tmp_path),
                "--sampling-rate",
                "8",
            ]
        )
        == 0
    )  # every frame inside the 3 s video
    assert (tmp_path / "a.explain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    gif = Image.open(tmp_path / "a.explain.gif")
    assert gif.n_frames == 4  # one per input frame
    data = json.loads((tmp_path / "a.explain.json").read_text())
    assert all(abs(sum(map(sum, frame)) - 1) < 1e-4 for frame in data["maps"])


def test_onnx_export_matches_onnxruntime(ckpt, videos, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from timesformer.inference.export import check_onnx

    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt / "named"), "--format", "onnx", "--out", str(out)]) == 0
    model = tf.load_pretrained(ckpt / "named")
    assert check_onnx(model, out, torch.randn(5, 4, 3, 32, 32)) <= 1e-4  # dynamic batch: 5 != the traced 2
    views, _ = Predictor(model).views(videos / "a.mp4")  # a real decoded clip
    assert check_onnx(model, out, views) <= 1e-4
    assert main(["export", "--checkpoint", str(ckpt / "named"), "--out", str(out)]) == 2  # no silent overwrite


def test_torch_export(ckpt, tmp_path, capsys):
    out = tmp_path / "model.pt2"
    assert main(["export", "--checkpoint", str(ckpt / "named"), "--format", "torch", "--out", str(out)]) == 0
    program = torch.export.load(str(out))
    model = tf.load_pretrained(ckpt / "named")
    video = torch.randn(3, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(video), model(video), atol=1e-5, rtol=1e-5)


def test_the_sampling_protocol_travels_with_the_weights(tmp_path, monkeypatch, capsys):
    """An SSv2 model (segment sampling) is run with segment sampling unless the command line says otherwise."""
    import timesformer.inference as inference
    from timesformer.cli import main

    model = small_model(labels=tuple("abcde")).eval()
    model.config = model.config.replace(sampling="segment")
    assert Predictor(model).spec.sampling == "segment"
    assert (Predictor(model, sampling="dense").spec.sampling, Predictor(small_model()).spec.sampling_rate) == (
        "dense",
        32,
    )
    tf.save_pretrained(model, tmp_path / "ssv2")
    assert tf.load_pretrained(tmp_path / "ssv2").config.sampling == "segment"
    write_video(tmp_path / "v.mp4", 20, fps=10, size=32)
    used = []

    class Recording(inference.Predictor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            used.append((self.spec.sampling, self.spec.sampling_rate, self.spec.fps))

    monkeypatch.setattr(inference, "Predictor", Recording)
    for extra in ([], ["--sampling", "dense", "--sampling-rate", "2", "--fps", "10"]):
        assert main(["predict", str(tmp_path / "v.mp4"), "--checkpoint", str(tmp_path / "ssv2"), *extra]) == 0
        assert (
            main(
                [
                    "extract",
                    str(tmp_path / "v.mp4"),
                    "--checkpoint",
                    str(tmp_path / "ssv2"),
                    "--out",
                    str(tmp_path / f"f{len(extra)}"),
                    *extra,
                ]
            )
            == 0
        )
    assert used == [("segment", 32, 30.0)] * 2 + [("dense", 2, 10.0)] * 2


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precision_flags_on_predict_extract_and_eval(precision, ckpt, videos, tmp_path, capsys, monkeypatch):
    """The fast path from the command line, on decoded footage: the same probabilities as fp32 within the
    precision's tolerance, features likewise; eval runs on it (and compiles when asked, falling back with a
    warning where the compiler fails)."""
    import warnings

    def run(*flags):
        assert (
            main(
                [
                    "predict",
                    str(videos / "a.mp4"),
                    str(videos / "b.webm"),
                    "--checkpoint",
                    str(ckpt / "named"),
                    "--topk",
                    "3",
                    "--json",
                    *flags,
                ]
            )
            == 0
        )
        return [
            {e["class"]: e["prob"] for e in json.loads(line)["top"]} for line in capsys.readouterr().out.splitlines()
        ]

    ref, low = run(), run("--precision", precision)
    assert [max(r, key=r.get) for r in ref] == [max(r, key=r.get) for r in low]
    assert all(abs(r[c] - q[c]) < 0.02 for r, q in zip(ref, low) for c in r)
    for flags, name in (([], "fp32"), (["--precision", precision], "low")):
        assert (
            main(
                [
                    "extract",
                    str(videos / "a.mp4"),
                    "--checkpoint",
                    str(ckpt / "named"),
                    "--out",
                    str(tmp_path / name),
                    *flags,
                ]
            )
            == 0
        )
    import numpy as np

    a, b = (np.load(tmp_path / name / "a.pooled.npy") for name in ("fp32", "low"))
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()

    from timesformer.data import write_synthetic

    root = write_synthetic(tmp_path / "data", 12, size=32, num_frames=4)
    model = tf.create_model("timesformer_tiny", num_classes=12, **TINY)
    tf.save_pretrained(model, tmp_path / "synth")
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or (lambda *a: 1 / 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert (
            main(
                [
                    "eval",
                    "--checkpoint",
                    str(tmp_path / "synth"),
                    "--data",
                    str(root),
                    "--precision",
                    precision,
                    "--compile",
                    "--sampling",
                    "segment",
                    "--out",
                    str(tmp_path / "eval"),
                ]
            )
            == 0
        )
    assert compiled and any("torch.compile failed (ZeroDivisionError" in str(w.message) for w in caught)
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["videos"] == 12 and report["views"] == "1x1"  # int8 calibration used to overwrite the views
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", str(tmp_path / "synth"), "--data", str(root), "--calibration-clips", "0"])
    assert "--calibration-clips: must be a whole number >= 1; got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_static_int8_from_the_command_line_calibrates_on_the_first_inputs(ckpt, videos, capsys):
    """``--precision int8 --compile``: static int8 whose scales come from the first files' clips; the same top class
    and probabilities within 0.05 of fp32 on decoded footage."""
    pytest.importorskip("torchao")
    files = [str(videos / "a.mp4"), str(videos / "b.webm")]

    def run(*flags):
        assert main(["predict", *files, "--checkpoint", str(ckpt / "named"), "--topk", "3", "--json", *flags]) == 0
        out = capsys.readouterr()
        return [{e["class"]: e["prob"] for e in json.loads(line)["top"]} for line in out.out.splitlines()], out.err

    import warnings

    ref, _ = run()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        low, err = run("--precision", "int8", "--compile", "--calibration-clips", "2")
    assert "int8: calibrated on 2 clips of the first inputs" in err
    assert not [w for w in caught if "failed" in str(w.message)]  # static int8 ran compiled, no fallback
    assert [max(r, key=r.get) for r in ref] == [max(r, key=r.get) for r in low]
    assert all(abs(r[c] - q.get(c, 0.0)) < 0.05 for r, q in zip(ref, low) for c in r)


def test_onnx_int8_export_runs_in_onnxruntime_close_to_fp32(ckpt, videos, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from timesformer.inference.export import onnx_logits

    out = tmp_path / "new" / "int8.onnx"  # a folder that doesn't exist yet
    assert main(["export", "--checkpoint", str(ckpt / "named"), "--quantize", "int8", "--out", str(out)]) == 0
    assert "int8 MatMul/Gemm weights" in capsys.readouterr().out
    import onnx

    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops  # the weights really are int8
    model = tf.load_pretrained(ckpt / "named")
    views, _ = Predictor(model, clips=2, crops=3).views(videos / "a.mp4")  # real decoded footage, 6 views
    with torch.no_grad():
        ref = model(views)
    low = onnx_logits(out, views)
    assert low.shape == ref.shape and (low - ref).abs().max() < 0.05 * ref.abs().max()
    assert (low.argmax(1) == ref.argmax(1)).all()
    assert [p.name for p in out.parent.iterdir()] == ["int8.onnx"]  # no temporary left beside it
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(ckpt / "named"),
                "--format",
                "torch",
                "--quantize",
                "int8",
                "--out",
                str(tmp_path / "x.pt2"),
            ]
        )
        == 2
    )
    assert "--quantize int8 applies to --format onnx" in capsys.readouterr().err


def test_int8_names_the_device_it_needs(ckpt, videos, capsys):
    model = tf.load_pretrained(ckpt / "named")
    with pytest.raises(ValueError, match=r"precision='int8' runs on the cpu; got device meta"):
        Predictor(model, precision="int8", device="meta")
    assert next(model.parameters()).device.type == "cpu"  # refused before anything moved
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(ckpt / "named"),
                "--data",
                str(videos),
                "--precision",
                "int8",
                "--device",
                "cuda",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--precision int8 runs on the cpu; got --device cuda" in err or "no CUDA device" in err


def test_frame_and_patch_features_ignore_padded_frames(ckpt, tmp_path):
    """A video shorter than the clip: its padded frames are masked out of the tokens (they used to leak in)."""
    write_video(tmp_path / "short.mp4", 2, fps=30, size=64)  # 2 frames for a 4-frame model
    model = tf.load_pretrained(ckpt / "named")
    predictor = Predictor(model, sampling="dense", sampling_rate=1, fps=30)
    views, masks = predictor.views(tmp_path / "short.mp4")
    assert not masks.all()
    with torch.no_grad():
        expected = model.forward_tokens(views, masks).mean(0)
    torch.testing.assert_close(predictor.features(tmp_path / "short.mp4", "patches"), expected)
