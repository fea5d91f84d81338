"""How far each fast path moves a trained model's predictions: top-1 agreement with fp32 and |delta logit|.

Two inputs: held-out SyntheticMotion clips (tensors), and real footage -- the same kind of clips encoded as H.264
files by PyAV, then decoded, resized and normalised by ``Predictor`` as ``timesformer predict`` does.

    python benchmarks/bench_agreement.py --checkpoint runs/demo/divided/best   # the demo's trained model
    python benchmarks/bench_agreement.py                                       # trains a short synthetic run first

Beside ``optimize``'s paths, the exported files: ONNX int8 (onnxruntime, dynamic quantization), OpenVINO f32, bf16
(where the CPU has it) and int8 (NNCF); ``--no-exports`` leaves them out.

Static int8 (ours and OpenVINO's) is calibrated on ``--calibration-clips`` training clips (default 64, as
``timesformer export``; never the held-out ones).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from timing import cpu_flags, cpu_name
from torch.utils.data import DataLoader

import timesformer as tf
from timesformer.data import SyntheticMotion, collate, write_synthetic
from timesformer.inference import Predictor
from timesformer.inference.predict import expand_inputs


def short_run(steps: int = 300) -> tf.TimeSformer:
    """The demo's divided model (dim 96), trained for ``steps`` steps of 32 clips: a model that learned."""
    torch.manual_seed(0)
    model = tf.create_model("timesformer_tiny", dim=96, heads=3, num_classes=12)
    data = SyntheticMotion(steps * 32, seed=1, mean=model.config.mean, std=model.config.std)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for batch in DataLoader(data, batch_size=32, shuffle=True, collate_fn=collate):
        torch.nn.functional.cross_entropy(model(batch["video"]), batch["label"]).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def exported(model, calibration: torch.Tensor, folder: Path) -> dict:
    """name -> callable(video b t c H W) -> logits, for each exported file this machine can run."""
    out = {}
    try:
        from timesformer.inference.export import export_onnx, onnx_session, quantize_onnx

        int8 = quantize_onnx(export_onnx(model, folder / "fp32.onnx"), folder / "int8.onnx")
        session = onnx_session(int8, threads=torch.get_num_threads())  # one session for every batch
        out["ONNX int8 (onnxruntime, dynamic)"] = lambda video: torch.from_numpy(
            session.run(["logits"], {"video": video.numpy()})[0]
        )
    except ImportError as err:
        print(f"skipped ONNX: {err}")
    try:
        import openvino as ov

        from timesformer.errors import UserError
        from timesformer.inference.export_openvino import (
            OpenVINOModel,
            convert_openvino,
            export_openvino,
            quantize_openvino,
        )
    except ImportError as err:
        print(f"skipped OpenVINO: {err}")
        return out
    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    for name, precision, quantize in (("f32", "f32", None), ("bf16", "bf16", None), ("int8 (NNCF)", "f32", "int8")):
        if precision == "bf16" and not bf16:
            print("skipped OpenVINO bf16: this CPU has no bf16")
            continue
        path = folder / f"ov-{precision}-{quantize}"
        try:
            export_openvino(model, path, precision=precision, quantize=quantize, calibration=calibration)
        except UserError as err:  # its check refused it: measured all the same, built as the export builds it
            print(f"OpenVINO {name}: the export refused it ({err})")
            ranges = calibration[[k for k in range(len(calibration)) if k % 4 != 3]]  # as export_openvino's
            built = quantize_openvino(convert_openvino(model), ranges) if quantize else convert_openvino(model)
            out[f"OpenVINO {name}, refused by the export"] = OpenVINOModel(
                built, precision=precision, threads=torch.get_num_threads()
            )
            continue
        out[f"OpenVINO {name}"] = OpenVINOModel(path, threads=torch.get_num_threads())
    return out


def row(name: str, ref: torch.Tensor, low: torch.Tensor, labels: torch.Tensor, seconds: float) -> str:
    delta = (low - ref).abs()
    return (
        f"| {name} | {len(ref)} | {(low.argmax(1) == ref.argmax(1)).float().mean():.2%} | "
        f"{(low.argmax(1) == labels).float().mean():.2%} | {delta.mean():.4f} | {delta.max():.4f} | "
        f"{delta.mean() / ref.abs().mean():.2%} | {seconds:.1f} |"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a trained model (default: train a short synthetic run)")
    ap.add_argument("--clips", type=int, default=600, help="held-out clips (default 600)")
    ap.add_argument("--videos", type=int, default=120, help="encoded videos (default 120)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calibration-clips", type=int, default=64, help="static int8's (default 64, as export's)")
    ap.add_argument("--no-exports", action="store_true", help="leave out ONNX and OpenVINO")
    ap.add_argument(
        "--paths",
        default="bf16,bf16+compile,int8,int8+compile",
        help="optimize's paths to run (default all; int8+compile is torchao's static int8)",
    )
    args = ap.parse_args()
    paths = [(p.split("+")[0], p.endswith("+compile")) for p in args.paths.split(",") if p]
    torch.set_num_threads(args.threads)
    model = tf.load_pretrained(args.checkpoint) if args.checkpoint else short_run()
    cfg = model.config
    source = args.checkpoint or "a 300-step synthetic run (dim 96, divided)"
    norm = dict(mean=cfg.mean, std=cfg.std, num_frames=cfg.num_frames)
    n = args.calibration_clips
    calibration = collate([SyntheticMotion(n, seed=5, **norm)[i] for i in range(n)])["video"]
    test = SyntheticMotion(args.clips, split="test", seed=3, **norm)
    batches = list(DataLoader(test, batch_size=100, collate_fn=collate))
    labels = torch.cat([b["label"] for b in batches])
    with torch.no_grad():
        ref = torch.cat([model(b["video"]) for b in batches])

    header = (
        "| path | inputs | top-1 agreement with fp32 | top-1 (labels) | mean abs delta logit | "
        "max abs delta logit | mean delta / mean abs logit | s |\n|---|---|---|---|---|---|---|---|"
    )
    print(
        f"\n{source}; torch {torch.__version__}, {args.threads} threads; {cpu_name()} ({cpu_flags()}); static int8 "
        f"calibrated on {n} clips\n"
    )
    print(f"Held-out clips (tensors): fp32 top-1 {(ref.argmax(1) == labels).float().mean():.2%}\n")
    print(header)
    for precision, compile in paths:
        start = time.perf_counter()
        fast = tf.optimize(model, precision=precision, compile=compile, calibration=calibration)
        with torch.no_grad():
            low = torch.cat([fast(b["video"]) for b in batches])
        print(
            row(f"{fast.method}{' + compile' if compile else ''}", ref, low, labels, time.perf_counter() - start),
            flush=True,
        )
    exports_dir = tempfile.TemporaryDirectory(prefix="bench_agreement_")
    files_out = {} if args.no_exports else exported(model, calibration, Path(exports_dir.name))
    for name, run in files_out.items():
        start = time.perf_counter()
        low = torch.cat([run(b["video"]) for b in batches])
        print(row(name, ref, low, labels, time.perf_counter() - start), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic(tmp, args.videos, split="test", seed=4, num_frames=cfg.num_frames)
        files = expand_inputs([str(root)])
        names = list(SyntheticMotion(1).classes)
        truth = torch.tensor([names.index(Path(f).parent.name) for f in files])
        base = Predictor(model, sampling="segment")
        ref = torch.stack([base.logits(f) for f in files])
        print(
            f"\nEncoded H.264 videos, decoded by Predictor (segment sampling): fp32 top-1 "
            f"{(ref.argmax(1) == truth).float().mean():.2%}\n"
        )
        print(header)
        for precision, compile in paths:
            start = time.perf_counter()
            pred = Predictor(model, sampling="segment", precision=precision, compile=compile)
            pred.model.calibrate(calibration)
            low = torch.stack([pred.logits(f) for f in files])
            print(
                row(
                    f"{pred.model.method}{' + compile' if compile else ''}",
                    ref,
                    low,
                    truth,
                    time.perf_counter() - start,
                ),
                flush=True,
            )
        for name, run in files_out.items():  # the exported graphs take the same views (every frame real here)
            start = time.perf_counter()
            views = [base.views(f) for f in files]
            assert all(bool(m.all()) for _, m in views), "a clip with masked frames: the exports take no mask"
            low = torch.stack([run(v).mean(0) for v, _ in views])
            print(row(name, ref, low, truth, time.perf_counter() - start), flush=True)


if __name__ == "__main__":
    main()
