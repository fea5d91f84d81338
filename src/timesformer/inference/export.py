"""Export: ONNX (dynamic batch, opset >= 17) checked against onnxruntime, and ``torch.export``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

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
        raise ValueError(f"opset must be >= 17; got {opset}")
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
