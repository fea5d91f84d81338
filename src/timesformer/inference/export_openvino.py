"""OpenVINO export: an IR folder (``model.xml``, ``model.bin``, ``export.json``) in f32, bf16 or int8, checked
against PyTorch fp32 before anything is written.

- f32 and bf16 are the same IR: the precision is the CPU plugin's run-time hint, recorded in ``export.json``;
  ``OpenVINOModel`` sets it when it compiles the folder (left to itself the plugin picks bf16 wherever the CPU has
  it: other code loading ``model.xml`` sets ``INFERENCE_PRECISION_HINT`` itself).
- int8 is NNCF's post-training quantization of that IR, its activation ranges set from calibration clips (the
  ``predict`` views of real videos; the transformer preset keeps softmax and the norms in float). On a CPU without
  VNNI (AVX2 only), int8 products add up in 16-bit registers that saturate; NNCF's overflow fix (7-bit weights)
  avoids that. ``overflow_fix="auto"`` applies it to every layer where the exporting CPU lacks VNNI, to the first
  only (NNCF's default) where it has VNNI or AMX; the folder records which. Unlike NNCF's defaults, and as our own
  static int8 does, activation ranges come from histograms (not the mean of each sample's min and max, which
  outliers widen) and the attention's scaled dot product stays in float (NNCF quantizes its queries and keys). On
  a 300-step model on an AVX2 EPYC, 64 calibration clips, those two took OpenVINO int8's drift from 3.1 % of the
  mean logit to 0.54 % and its agreement with fp32 from 99.17 % to 99.83 % of 600 clips
  (``benchmarks/results/openvino-int8-study-2026-12-05c-epyc-avx2.md``).
- The check compiles the IR at its precision and runs it beside PyTorch fp32: on real clips where given (for int8
  with 8 or more, every 4th calibration clip held out of NNCF's ranges, so the check is out of sample), else on 3
  random ones. The folder is written (one rename) only when the logits stay within ``TOLERANCE`` of PyTorch's and,
  on real clips, the top-1 class agrees on at least ``AGREEMENT`` of them.

``pip install 'timesformer[openvino]'`` (``openvino``, ``nncf``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from ..errors import UserError
from ..fast import cpu_has_vnni
from ..model import TimeSformer
from .export import _Logits

PRECISIONS = ("f32", "bf16")
# the largest logit difference from PyTorch fp32, over the largest logit, an export may have: a broken export is
# far past these; static int8's worst clip moves 10-11 % on a trained model whose top-1 it keeps on 99 % of clips,
# so it is held to its agreement as well
TOLERANCE = {"f32": 1e-3, "bf16": 0.1, "int8": 0.2}
AGREEMENT = 0.9  # the share of real check clips whose top-1 class must be PyTorch fp32's
OVERFLOW_FIXES = ("auto", "all", "first")  # int8: NNCF's overflow fix on every layer, or on the first only


def _openvino():
    try:
        import openvino
    except ImportError:
        raise UserError("--format openvino needs OpenVINO: pip install 'timesformer[openvino]'") from None
    return openvino


def convert_openvino(model: TimeSformer):
    """``model`` as an ``openvino.Model`` with a dynamic batch (frames and size: the config's)."""
    ov = _openvino()
    cfg = model.config
    shape = (cfg.num_frames, cfg.channels, cfg.image_size, cfg.image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)  # torch.export, as the ONNX export: no tracer baking sizes
    with torch.no_grad():
        program = torch.export.export(_Logits(model.eval()), (torch.randn(2, *shape),), dynamic_shapes=({0: batch},))
    converted = ov.convert_model(program)
    converted.reshape({0: ov.PartialShape([-1, *shape])})  # only the batch stays dynamic
    converted.inputs[0].get_tensor().set_names({"video"})
    converted.outputs[0].get_tensor().set_names({"logits"})
    return converted


def resolve_overflow_fix(overflow_fix: str) -> str:
    """``auto`` -> ``all`` on a CPU without VNNI, else ``first``; ``all`` and ``first`` as they are."""
    if overflow_fix not in OVERFLOW_FIXES:
        raise UserError(f"overflow_fix must be one of {', '.join(OVERFLOW_FIXES)}; got {overflow_fix!r}")
    if overflow_fix == "auto":
        return "first" if cpu_has_vnni() else "all"
    return overflow_fix


def quantize_openvino(converted, clips: torch.Tensor, overflow_fix: str = "auto"):
    """NNCF post-training int8 of ``converted`` (an ``openvino.Model``), its ranges from ``clips`` (``n t c H W``
    float, normalised as the model takes them), one at a time; ``overflow_fix``: see the module's notes."""
    fix = resolve_overflow_fix(overflow_fix)
    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    except ImportError:
        raise UserError("--quantize int8 needs NNCF: pip install 'timesformer[openvino]'") from None
    data = nncf.Dataset([clip[None].numpy() for clip in clips])
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.ENABLE if fix == "all" else OverflowFix.FIRST_LAYER,
        activations_range_estimator_params=RangeEstimatorParametersSet.HISTOGRAM,
    )
    return nncf.quantize(
        converted,
        data,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(clips),
        advanced_parameters=advanced,
        # a model whose attention was decomposed has no such node: nothing to leave out, no error
        ignored_scope=nncf.IgnoredScope(types=["ScaledDotProductAttention"], validate=False),
    )


class OpenVINOModel:
    """A compiled IR as a callable: ``video: b t c H W float -> logits: b classes`` (torch tensors). ``path``: an
    export folder (or its ``model.xml``), or an ``openvino.Model``; ``precision``: ``f32`` or ``bf16`` (default:
    the folder's ``export.json``, else the plugin's choice); ``threads``: the CPU plugin's inference threads
    (default: its own choice)."""

    def __init__(self, path, *, precision: str | None = None, threads: int | None = None):
        ov = _openvino()
        core = ov.Core()
        if isinstance(path, str | os.PathLike):
            path = Path(path)
            path = path / "model.xml" if path.is_dir() else path
            if not path.is_file():
                raise UserError(f"{path}: no OpenVINO IR there (an export folder holds model.xml and model.bin)")
            report = path.with_name("export.json")
            found = json.loads(report.read_text()) if report.is_file() else {}
            if precision is None:
                precision = found.get("precision")
            # folders from before the choice was recorded had NNCF's default: the first layer only
            fix = found.get("overflow_fix", "first" if found.get("quantize") == "int8" else None)
            if fix == "first" and not cpu_has_vnni():
                warnings.warn(
                    f"{path.parent}: int8 with NNCF's overflow fix on the first layer only (made for CPUs with VNNI); "
                    "this CPU has no VNNI, so its 16-bit int8 sums may saturate: export it again with "
                    "--overflow-fix all",
                    RuntimeWarning,
                    stacklevel=2,
                )
            path = core.read_model(str(path))
        config = {}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = _hint(precision)
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(path, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        result = self.request.infer({0: video.detach().float().contiguous().numpy()})
        return torch.from_numpy(result[self.compiled.output(0)].copy())


def _hint(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def export_openvino(
    model: TimeSformer,
    out: str | os.PathLike,
    *,
    precision: str = "f32",
    quantize: str | None = None,
    calibration: torch.Tensor | None = None,
    overflow_fix: str = "auto",
    overwrite: bool = False,
) -> dict:
    """Write ``out/`` (``model.xml``, ``model.bin``, ``export.json``): ``model`` converted, at ``precision`` (the
    run-time hint: ``f32`` or ``bf16``), int8 when ``quantize="int8"`` (NNCF, ranges from ``calibration``: ``n t c
    H W`` clips, required; ``overflow_fix``: see the module's notes). Checked first against PyTorch fp32 (see the
    module's notes); a drift over ``TOLERANCE`` or, on real clips, an agreement under ``AGREEMENT`` is a
    ``UserError`` and nothing is written. Returns ``export.json``'s content: ``{"precision", "quantize", "drift",
    "same_top1", "clips", "check", "calibration_clips", "overflow_fix", ...}``."""
    _hint(precision)
    if quantize not in (None, "int8"):
        raise UserError(f"quantize must be None or 'int8'; got {quantize!r}")
    fix = resolve_overflow_fix(overflow_fix)  # validated even where it doesn't apply
    if not quantize:
        if overflow_fix != "auto":
            raise UserError("overflow_fix applies to quantize='int8'")
        fix = None
    if quantize and (calibration is None or len(calibration) == 0):
        raise UserError("--quantize int8 sets its ranges from real clips: pass --calibration VIDEO [VIDEO ...]")
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    ov = _openvino()
    cfg = model.config
    shape = (cfg.num_frames, cfg.channels, cfg.image_size, cfg.image_size)
    converted = convert_openvino(model)
    # the clips it will see: real ones where given (int8 ranges fit real video, not noise), else random
    if calibration is None:
        check, ranges, checked_on = torch.randn(3, *shape), None, "random"
    elif quantize and len(calibration) >= 8:  # every 4th held out of the ranges: checked out of sample
        keep = [k for k in range(len(calibration)) if k % 4 != 3]
        check, ranges, checked_on = calibration[3::4].float(), calibration[keep], "held-out calibration clips"
    else:
        check, ranges, checked_on = calibration.float(), calibration, "calibration clips"
    if quantize:
        converted = quantize_openvino(converted, ranges, fix)
    with torch.no_grad():
        ref = torch.cat([model.eval()(clip[None]) for clip in check])
    ours = torch.cat([OpenVINOModel(converted, precision=precision)(clip[None]) for clip in check])
    drift = float((ours - ref).abs().max() / ref.abs().max())
    same = int((ours.argmax(1) == ref.argmax(1)).sum())
    kind = quantize or precision
    if not drift <= TOLERANCE[kind]:  # NaN too
        raise UserError(
            f"OpenVINO {kind} logits differ from PyTorch fp32 by {drift:.1%} of the largest logit "
            f"(> {TOLERANCE[kind]:.1%}); {out} not written"
        )
    if checked_on != "random" and same < AGREEMENT * len(check):
        raise UserError(
            f"OpenVINO {kind} names PyTorch fp32's class on {same} of {len(check)} {checked_on} (< "
            f"{AGREEMENT:.0%}); {out} not written"
        )
    report = {
        "format": "openvino",
        "openvino": ov.__version__,
        "precision": precision,
        "quantize": quantize,
        "input": {"name": "video", "shape": ["batch", *shape], "mean": list(cfg.mean), "std": list(cfg.std)},
        "labels": list(cfg.labels) if cfg.labels else None,
        "drift": drift,
        "same_top1": same,
        "clips": len(check),
        "check": checked_on,
        "calibration_clips": 0 if ranges is None else len(ranges),
        "overflow_fix": fix,  # int8: NNCF's overflow fix on "all" layers or the "first"; None: not int8
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))  # beside out: one rename
    try:
        ov.save_model(converted, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / "export.json").write_text(json.dumps(report, indent=2) + "\n")
        if out.is_file() or out.is_symlink():
            out.unlink()  # a file where the folder goes (--overwrite)
        if out.exists():  # --overwrite: the old folder goes only once the new one is in its place
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
            os.replace(out, old)  # onto the empty folder just made
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report
