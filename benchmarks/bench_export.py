"""Latency of an exported model: onnxruntime (CPU) fp32 and int8 against eager PyTorch in fp32 and bf16
autocast, one run. The int8 row also gives its logits' drift from PyTorch fp32.

    python benchmarks/bench_export.py [--model timesformer_base] [--batch 1] [--threads 2] [--reps 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from timing import median_seconds


def median_ms(fn, reps: int) -> float:
    return 1000 * median_seconds(fn, reps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="timesformer_base")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import timesformer
    from timesformer.inference.export import export_onnx, onnx_session, quantize_onnx

    torch.manual_seed(0)
    model = timesformer.create_model(args.model).eval()
    cfg = model.config
    video = torch.randn(args.batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    export_onnx(model, path)
    session = onnx_session(path, threads=args.threads)
    feed = {"video": video.numpy()}
    with torch.inference_mode():
        ref = model(video)
    diff = float((torch.from_numpy(session.run(["logits"], feed)[0]) - ref).abs().max())
    quantize_onnx(path, path.with_name("model.int8.onnx"))
    session8 = onnx_session(path.with_name("model.int8.onnx"), threads=args.threads)
    low = torch.from_numpy(session8.run(["logits"], feed)[0])
    drift = float((low - ref).abs().max() / ref.abs().max())
    agree = float((low.argmax(1) == ref.argmax(1)).float().mean())

    def eager(dtype):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
                model(video)

        return run

    rows = [
        ("PyTorch eager fp32", median_ms(eager("fp32"), args.reps)),
        ("PyTorch eager bf16 autocast", median_ms(eager("bf16"), args.reps)),
        ("onnxruntime CPU fp32", median_ms(lambda: session.run(["logits"], feed), args.reps)),
        ("onnxruntime CPU int8 (dynamic)", median_ms(lambda: session8.run(["logits"], feed), args.reps)),
    ]
    base = rows[0][1]
    print(
        f"\n{args.model} ({cfg.num_frames}x{cfg.image_size}), batch {args.batch}, {args.threads} threads, median of "
        f"{args.reps}; ONNX vs PyTorch max abs diff {diff:.1e}; int8 ONNX: max |logit diff| {drift:.1%} of the "
        f"largest logit, top-1 as fp32 on {agree:.0%} of the batch (random init)\n"
    )
    print("| runtime | latency (ms) | vs eager fp32 |")
    print("|---|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.0f} | {base / ms:.2f}x |")


if __name__ == "__main__":
    main()
