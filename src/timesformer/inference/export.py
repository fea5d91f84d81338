"""Export: ONNX (dynamic batch, opset >= 17) checked against onnxruntime, its int8 variant, and ``torch.export``;
``export_checked`` does any of them and checks the file against PyTorch (what ``timesformer export`` runs)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UserError
from ..model import TimeSformer


class _Logits(torch.nn.Module):
    """The exported graph: ``video: b t c H W -> logits: b classes``, no mask (all frames real)."""

    def __init__(self, model: TimeSformer):
        super().__init__()
        self.model = model

    def forward(self, video):
        return self.model(video)


def export_onnx(
    model: TimeSformer, out: str | os.PathLike, *, opset: int = 18, frames: int | None = None, size: int | None = None
) -> Path:
    """Write an ONNX file with a dynamic batch dimension (frames and size fixed at export: ``frames`` x ``size``,
    default the config's). Written to a temporary name, then renamed."""
    cfg = model.config
    if opset < 17:
        raise UserError(f"opset must be >= 17; got {opset}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, frames or cfg.num_frames, cfg.channels, size or cfg.image_size, size or cfg.image_size)
    tmp = out.with_name(f".{out.name}.tmp")
    wrapper = _Logits(model.eval())
    # the torch.export-based exporter keeps the batch symbolic through every reshape (the TorchScript tracer
    # bakes sizes derived from it into the graph)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            input_names=["video"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            external_data=False,
        )
    program.save(str(tmp))
    os.replace(tmp, out)
    return out


def quantize_onnx(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The int8 variant of an exported ONNX file: MatMul / Gemm weights quantized to int8 with activations
    quantized per batch at run time (onnxruntime's dynamic quantization: no calibration data), written
    atomically."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ImportError("int8 ONNX needs onnxruntime: pip install 'timesformer[export]'") from None
    from ..files import write_atomic

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(
        out,
        lambda tmp: quantize_dynamic(
            str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
        ),
    )
    return out


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("checking ONNX needs onnxruntime: pip install 'timesformer[export]'") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(path: str | os.PathLike, video: torch.Tensor) -> torch.Tensor:
    """onnxruntime's logits for ``video: b t c H W`` (float32)."""
    (logits,) = onnx_session(path).run(["logits"], {"video": video.float().numpy()})
    return torch.from_numpy(logits)


def check_onnx(model: TimeSformer, path: str | os.PathLike, video: torch.Tensor) -> float:
    """Max abs difference between onnxruntime and eager PyTorch logits on ``video``."""
    with torch.no_grad():
        ours = model.eval()(video)
    return float((onnx_logits(path, video) - ours).abs().max())


def export_program(
    model: TimeSformer, out: str | os.PathLike, *, frames: int | None = None, size: int | None = None
) -> Path:
    """``torch.export`` the model with a dynamic batch and save the ExportedProgram (``.pt2``)."""
    cfg = model.config
    example = torch.randn(2, frames or cfg.num_frames, cfg.channels, size or cfg.image_size, size or cfg.image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        program = torch.export.export(_Logits(model.eval()), (example,), dynamic_shapes=({0: batch},))
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.export.save(program, str(tmp))
    os.replace(tmp, out)
    return out


# how far an export may stray from eager PyTorch fp32 on a batch of random clips
ONNX_TOLERANCE = 1e-4  # max abs logit difference, fp32 ONNX
INT8_TOLERANCE = 0.1  # max abs logit difference over the largest logit, int8 ONNX


def export_checked(
    model: TimeSformer, out: str | os.PathLike, *, format: str = "onnx", opset: int = 18, quantize: str | None = None
) -> dict:
    """Export ``model`` to ``out`` and check the file where a runtime can: ``onnx`` against onnxruntime on a batch of
    3 random clips (``quantize="int8"``: the int8 variant, written only when within ``INT8_TOLERANCE``), ``torch``
    an ``ExportedProgram``. Returns what was measured: ``{"diff"}`` (fp32 ONNX, max abs logit difference),
    ``{"drift", "same_top1"}`` (int8: the difference over the largest logit, and how many of the 3 clips keep
    their top class), ``{}`` (torch)."""
    import tempfile

    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8'; got {quantize!r}")
    if quantize and format != "onnx":
        raise UserError(
            "--quantize int8 applies to --format onnx (for PyTorch, use --precision int8 on predict, extract and eval)"
        )
    if format == "torch":
        export_program(model, out)
        return {}
    if format != "onnx":
        raise ValueError(f"format must be 'onnx' or 'torch'; got {format!r}")
    cfg, out = model.config, Path(out)
    video = torch.randn(3, cfg.num_frames, cfg.channels, cfg.image_size, cfg.image_size)
    if not quantize:
        export_onnx(model, out, opset=opset)
        diff = check_onnx(model, out, video)
        if diff > ONNX_TOLERANCE:
            raise RuntimeError(f"ONNX output differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE:g})")
        return {"diff": diff}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:  # beside out: one rename
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", opset=opset)
        int8 = quantize_onnx(fp32, Path(tmp) / "int8.onnx")
        with torch.no_grad():
            ref = model.eval()(video)
        low = onnx_logits(int8, video)
        drift = float((low - ref).abs().max() / ref.abs().max())
        if not drift <= INT8_TOLERANCE:  # NaN too
            raise UserError(
                f"int8 ONNX logits differ from PyTorch fp32 by {drift:.1%} of the largest logit "
                f"(> {INT8_TOLERANCE:.0%}); {out} not written"
            )
        os.replace(int8, out)
    return {"drift": drift, "same_top1": int((low.argmax(1) == ref.argmax(1)).sum())}
