"""timesformer export --format openvino: an IR folder whose logits equal PyTorch's, its int8 variant calibrated on real
videos, and nothing written (nor anything already there lost) when the check fails."""

import contextlib
import io
import json
import warnings

import pytest
import torch

import timesformer as tf
from timesformer.cli import main
from timesformer.errors import UserError

from ..conftest import labelled_tiny_model
from ..data.videos import write_video

pytest.importorskip("openvino")
pytest.importorskip("av")

from timesformer.inference import export_openvino as ov_export
from timesformer.inference.export_openvino import OpenVINOModel


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ov")
    tf.save_pretrained(labelled_tiny_model(), root / "ckpt")
    (root / "videos").mkdir()
    for i in range(3):
        write_video(root / "videos" / f"v{i}.mp4", 40 + 20 * i, size=64)
    return root


@pytest.fixture(scope="module")
def f32_ir(ckpt):
    """``timesformer export --format openvino`` of the checkpoint, once: the folder and what the command printed."""
    out = ckpt / "f32"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", "--checkpoint", str(ckpt / "ckpt"), "--format", "openvino", "--out", str(out)])
    assert code == 0
    return out, printed.getvalue()


def test_the_f32_ir_gives_pytorchs_logits_at_any_batch(ckpt, f32_ir):
    out, printed = f32_ir
    assert "3 random: max |logit diff|" in printed and "same top-1 on 3/3" in printed
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.bin", "model.xml"]
    report = json.loads((out / "export.json").read_text())
    assert report["precision"] == "f32" and report["labels"] == ["cat", "dog", "eel"] and report["drift"] < 1e-5
    compiled = OpenVINOModel(out, threads=1)
    model = tf.load_pretrained(ckpt / "ckpt").eval()
    for batch in (1, 3):
        video = torch.randn(batch, 4, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(compiled(video), model(video), atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # 40 s; the command-line test below runs int8 in the default set
def test_int8_names_fp32s_class_on_a_trained_model(trained_motion, tmp_path):
    """NNCF int8 calibrated on 32 training clips names the same class as PyTorch fp32 on >= 98 % of 480 held-out
    clips, and moves the logits by under 5 % of their mean magnitude (torch int8's bound). Measured 98.96 % (475 of
    480) with NNCF's own ranges and int8 attention inputs, before the export changed both (0274fcd)."""
    from torch.utils.data import DataLoader

    from timesformer.data import SyntheticMotion, collate

    model, test, _ = trained_motion
    train = SyntheticMotion(64, classes=test.classes, seed=1, mean=model.config.mean, std=model.config.std)
    calibration = collate([train[i] for i in range(42)])["video"]
    report = ov_export.export_openvino(model, tmp_path / "int8", quantize="int8", calibration=calibration)
    assert report["quantize"] == "int8" and report["calibration_clips"] == 32  # 10 held out for the check
    assert report["check"] == "held-out calibration clips" and report["clips"] == 10
    compiled = OpenVINOModel(tmp_path / "int8", threads=1)
    assert runtime_precisions(tmp_path / "int8")["i8"] > 0  # int8 kernels run
    ref, low = [], []
    with torch.no_grad():
        for batch in DataLoader(test, batch_size=60, collate_fn=collate):
            ref.append(model(batch["video"]))
            low.append(compiled(batch["video"]))
    ref, low = torch.cat(ref), torch.cat(low)
    agreement = (ref.argmax(1) == low.argmax(1)).float().mean().item()
    assert agreement >= 0.98, agreement
    assert (low - ref).abs().mean() <= 0.05 * ref.abs().mean()


def test_int8_from_the_command_line_takes_its_ranges_from_videos(trained_motion, tmp_path, capsys):
    from timesformer.data import write_synthetic

    tf.save_pretrained(trained_motion[0], tmp_path / "ckpt")
    videos = write_synthetic(tmp_path / "videos", 4, size=32)
    out = tmp_path / "int8"
    args = ["export", "--checkpoint", str(tmp_path / "ckpt"), "--format", "openvino", "--out", str(out)]
    assert main([*args, "--quantize", "int8"]) == 2  # no calibration videos: a UserError, nothing written
    assert "--calibration VIDEO" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--quantize", "int8", "--calibration", str(videos), "--calibration-clips", "3"]) == 0
    fix = "first" if ov_export.cpu_has_vnni() else "all"
    assert f"int8 (NNCF, 3 calibration clips, overflow fix: {fix} layers)" in capsys.readouterr().out
    report = json.loads((out / "export.json").read_text())
    assert report["quantize"] == "int8" and report["clips"] == 3 and report["drift"] <= ov_export.TOLERANCE["int8"]
    assert report["overflow_fix"] == fix
    assert runtime_precisions(out)["i8"] > 0
    # the attention's scaled dot product stays in float: no quantizer feeds it, while the linears' inputs have one
    import openvino

    ops = openvino.Core().read_model(out / "model.xml").get_ops()
    feeding = {kind: [] for kind in ("ScaledDotProductAttention", "MatMul")}
    for op in ops:
        if op.get_type_name() in feeding:
            sources = [op.input_value(i).get_node().get_type_name() for i in range(op.get_input_size())]
            feeding[op.get_type_name()].append("FakeQuantize" in sources)
    assert feeding["ScaledDotProductAttention"] and not any(feeding["ScaledDotProductAttention"])
    assert any(feeding["MatMul"])


def runtime_precisions(folder) -> dict:
    """How many ops of the compiled IR run in each precision (the CPU plugin's own account)."""
    ops = OpenVINOModel(folder).compiled.get_runtime_model().get_ops()
    counts: dict = {}
    for op in ops:
        kind = op.get_rt_info()["runtimePrecision"].astype(str)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def test_the_folder_compiles_at_the_precision_it_was_checked_at(f32_ir, monkeypatch, tmp_path):
    """The CPU plugin picks bf16 by itself wherever the CPU has it: the hint export.json records is set at compile."""
    import types

    import openvino

    asked = []

    class Core(openvino.Core):
        def compile_model(self, model, device, config=None):
            asked.append(dict(config or {}))
            return super().compile_model(model, device, config or {})

    monkeypatch.setattr(ov_export, "_openvino", lambda: types.SimpleNamespace(Core=Core))
    f32, _ = f32_ir
    OpenVINOModel(f32)
    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    for name in ("model.xml", "model.bin"):
        (bf16 / name).write_bytes((f32 / name).read_bytes())
    (bf16 / "export.json").write_text(json.dumps({"precision": "bf16"}))
    OpenVINOModel(bf16)
    OpenVINOModel(bf16, precision="f32", threads=1)  # the caller's choice wins
    assert [a.get("INFERENCE_PRECISION_HINT") for a in asked] == ["f32", "bf16", "f32"]
    assert asked[2]["INFERENCE_NUM_THREADS"] == 1


def test_loading_int8_made_for_vnni_on_a_cpu_without_it_warns(f32_ir, monkeypatch, tmp_path):
    folder = tmp_path / "int8"
    folder.mkdir()
    for name in ("model.xml", "model.bin"):
        (folder / name).write_bytes((f32_ir[0] / name).read_bytes())
    (folder / "export.json").write_text(json.dumps({"precision": "f32", "quantize": "int8", "overflow_fix": "first"}))
    monkeypatch.setattr(ov_export, "cpu_has_vnni", lambda: False)
    with pytest.warns(RuntimeWarning, match="first layer only.*this CPU has no VNNI.*--overflow-fix all"):
        OpenVINOModel(folder)
    (folder / "export.json").write_text(json.dumps({"precision": "f32", "quantize": "int8"}))  # before the field
    with pytest.warns(RuntimeWarning, match="first layer only"):
        OpenVINOModel(folder)
    monkeypatch.setattr(ov_export, "cpu_has_vnni", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OpenVINOModel(folder)


def test_an_export_outside_its_bound_writes_nothing_and_keeps_the_old_folder(ckpt, f32_ir, monkeypatch):
    model = tf.load_pretrained(ckpt / "ckpt")
    out, _ = f32_ir
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        ov_export.export_openvino(model, out)
    monkeypatch.setitem(ov_export.TOLERANCE, "f32", -1.0)  # any drift is over it
    # the same model's conversion, read back from the fixture's folder (torch.export is 9 s of a tiny model)
    monkeypatch.setattr(
        ov_export, "convert_openvino", lambda m: ov_export._openvino().Core().read_model(out / "model.xml")
    )
    with pytest.raises(UserError, match=r"differ from PyTorch fp32 by .* not written"):
        ov_export.export_openvino(model, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in ckpt.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_openvino_options_are_refused_for_other_formats(ckpt, capsys):
    args = ["export", "--checkpoint", str(ckpt / "ckpt"), "--out", str(ckpt / "m.onnx")]
    assert main([*args, "--precision", "bf16"]) == 2
    assert "--precision, --calibration and --overflow-fix apply to --format openvino" in capsys.readouterr().err
    assert main([*args, "--overflow-fix", "all"]) == 2
    assert "--overflow-fix apply to --format openvino" in capsys.readouterr().err
    args = [*args[:-1], str(ckpt / "ov-f32"), "--format", "openvino", "--overflow-fix", "all"]
    assert main(args) == 2  # not int8: nothing to fix
    assert "--overflow-fix applies to --quantize int8" in capsys.readouterr().err and not (ckpt / "ov-f32").exists()


@pytest.mark.parametrize(
    "flags,fix",
    [("fpu sse avx2 fma", "all"), ("fpu avx2 avx512f avx512_vnni", "first"), ("fpu avx2 avx_vnni", "first")],
    ids=["avx2", "avx512-vnni", "avx-vnni"],
)
def test_int8_fixes_16_bit_overflow_on_every_layer_where_the_cpu_lacks_vnni(monkeypatch, tmp_path, flags, fix):
    """Without VNNI, int8 products add up in 16-bit registers that saturate: NNCF's overflow fix (7-bit weights) on
    every layer (measured on an AVX2 EPYC: top-1 agreement with fp32 94.5 % -> 97.8 % at 16 calibration clips);
    with VNNI, NNCF's default, the first layer only."""
    nncf = pytest.importorskip("nncf")
    from nncf.quantization.advanced_parameters import OverflowFix

    monkeypatch.setattr(ov_export, "cpu_has_vnni", lambda: fix == "first")
    asked = []
    monkeypatch.setattr(nncf, "quantize", lambda model, data, **kw: asked.append(kw) or model)
    ov_export.quantize_openvino(object(), torch.zeros(2, 4, 3, 32, 32))
    ov_export.quantize_openvino(object(), torch.zeros(2, 4, 3, 32, 32), overflow_fix="first")
    expected = OverflowFix.ENABLE if fix == "all" else OverflowFix.FIRST_LAYER
    assert [kw["advanced_parameters"].overflow_fix for kw in asked] == [expected, OverflowFix.FIRST_LAYER]
    assert all(kw["model_type"] == nncf.ModelType.TRANSFORMER and kw["subset_size"] == 2 for kw in asked)
    # as our static int8: histogram ranges, attention's scaled dot product in float (3.1 % -> 0.54 % drift)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    for kw in asked:
        assert kw["advanced_parameters"].activations_range_estimator_params == RangeEstimatorParametersSet.HISTOGRAM
        assert kw["ignored_scope"].types == ["ScaledDotProductAttention"] and not kw["ignored_scope"].validate
    with pytest.raises(UserError, match="overflow_fix applies to quantize='int8'"):
        ov_export.export_openvino(labelled_tiny_model(), tmp_path / "f32", overflow_fix="all")
    assert not (tmp_path / "f32").exists()
    with pytest.raises(UserError, match="overflow_fix must be one of auto, all, first; got .some."):
        ov_export.resolve_overflow_fix("some")
