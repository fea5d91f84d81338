"""Why OpenVINO int8 (NNCF) moves a trained model's top-1 more than our int8 does: NNCF's settings, one at a time.

The model is ``bench_agreement``'s 300-step synthetic run; 600 held-out clips. Each variant quantizes the same
converted IR (``export_openvino``'s conversion) on the first N of the same calibration clips and is compared with
PyTorch fp32. On CPUs without VNNI, int8 products add up in 16-bit registers that saturate; NNCF's overflow fix
(7-bit weights) on every layer is the setting that matters there. Our int8 rows close the table: dynamic (ranges
measured per batch) and static (ranges fixed from the same calibration clips, as NNCF's are), with full-range and
7-bit activations: the same saturation hits torchao's oneDNN kernels without VNNI. Then what else NNCF does unlike
ours, on top of the export's setting: int8 queries and keys into the attention, ranges from the mean of each
sample's min and max, asymmetric activations; and ours with 7-bit weights, as the overflow fix makes OpenVINO's.

    python benchmarks/study_openvino_int8.py [--md results.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from bench_agreement import short_run
from timing import cpu_flags, cpu_name
from torch.utils.data import DataLoader

from timesformer.data import SyntheticMotion, collate
from timesformer.inference.export_openvino import convert_openvino


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--md", help="also write the table to this markdown file")
    args = ap.parse_args()
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    torch.set_num_threads(args.threads)
    model = short_run()
    cfg = model.config
    norm = dict(mean=cfg.mean, std=cfg.std, num_frames=cfg.num_frames)
    batches = list(DataLoader(SyntheticMotion(600, split="test", seed=3, **norm), batch_size=100, collate_fn=collate))
    with torch.no_grad():
        ref = torch.cat([model(b["video"]) for b in batches])
    calibration = collate([SyntheticMotion(64, seed=5, **norm)[i] for i in range(64)])["video"]
    converted, core = convert_openvino(model), ov.Core()
    sdpa = nncf.IgnoredScope(types=["ScaledDotProductAttention"])
    no_smooth = AdvancedSmoothQuantParameters(matmul=-1)
    perf, histogram = nncf.QuantizationPreset.PERFORMANCE, RangeEstimatorParametersSet.HISTOGRAM  # ours: histogram
    variants = [  # name, calibration clips, nncf.quantize keywords
        ("overflow fix: first layer (NNCF's default)", 16, dict(overflow_fix=OverflowFix.FIRST_LAYER)),
        ("overflow fix: first layer (NNCF's default)", 64, dict(overflow_fix=OverflowFix.FIRST_LAYER)),
        ("overflow fix: none", 16, dict(overflow_fix=OverflowFix.DISABLE)),
        ("overflow fix: all layers", 16, dict(overflow_fix=OverflowFix.ENABLE)),
        ("overflow fix: all layers", 64, dict(overflow_fix=OverflowFix.ENABLE)),
        ("first layer, attention's SDPA left in float", 16, dict(overflow_fix=OverflowFix.FIRST_LAYER, scope=sdpa)),
        ("first layer, no SmoothQuant", 16, dict(overflow_fix=OverflowFix.FIRST_LAYER, smooth=no_smooth)),
        # what else OpenVINO int8 does unlike ours, each on top of the export's setting (all layers, 64 clips)
        ("all layers, attention's SDPA left in float", 64, dict(overflow_fix=OverflowFix.ENABLE, scope=sdpa)),
        ("all layers, symmetric activations (PERFORMANCE)", 64, dict(overflow_fix=OverflowFix.ENABLE, preset=perf)),
        ("all layers, activation ranges by histogram", 64, dict(overflow_fix=OverflowFix.ENABLE, ranges=histogram)),
        (
            "all layers, ranges by histogram, SDPA in float",
            64,
            dict(overflow_fix=OverflowFix.ENABLE, ranges=histogram, scope=sdpa),
        ),
    ]
    lines = [
        f"{cpu_name()} ({cpu_flags()}); torch {torch.__version__}, OpenVINO {ov.__version__}, NNCF "
        f"{nncf.__version__}, {args.threads} threads; 600 held-out clips, fp32 top-1 "
        f"{(ref.argmax(1) == torch.cat([b['label'] for b in batches])).float().mean():.2%}",
        "",
        "| variant | calibration clips | same top-1 as fp32 | mean abs delta logit | max abs delta logit | "
        "mean delta / mean abs logit | quantize s |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)

    def add(name, n, low, seconds):
        delta = (low - ref).abs()
        lines.append(
            f"| {name} | {n} | {(low.argmax(1) == ref.argmax(1)).float().mean():.2%} | {delta.mean():.4f} | "
            f"{delta.max():.4f} | {delta.mean() / ref.abs().mean():.2%} | {seconds} |"
        )
        print(lines[-1], flush=True)

    for name, n, kw in variants:
        advanced = AdvancedQuantizationParameters(overflow_fix=kw["overflow_fix"])
        if "smooth" in kw:
            advanced.smooth_quant_alphas = kw["smooth"]
        if "ranges" in kw:
            advanced.activations_range_estimator_params = kw["ranges"]
        data = nncf.Dataset([clip[None].numpy() for clip in calibration[:n]])
        start = time.perf_counter()
        quantized = nncf.quantize(
            converted.clone(),
            data,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=n,
            advanced_parameters=advanced,
            ignored_scope=kw.get("scope"),
            preset=kw.get("preset"),
        )
        seconds = f"{time.perf_counter() - start:.0f}"
        compiled = core.compile_model(quantized, "CPU", {"INFERENCE_NUM_THREADS": args.threads})
        add(name, n, torch.cat([torch.from_numpy(compiled(b["video"].numpy())[0]) for b in batches]), seconds)
    import timesformer as tf

    fast = tf.optimize(model, precision="int8")
    with torch.no_grad():
        add("ours: int8 dynamic (torch.ao, no calibration)", "-", torch.cat([fast(b["video"]) for b in batches]), "-")
    # like for like: ranges fixed from the same calibration clips, as NNCF's are (static), not measured per batch;
    # activations in full range (0-255, what static int8 used on every CPU before) and in 7 bits (what it uses
    # where the CPU lacks VNNI)
    import timesformer.fast as fast_module

    has_vnni = fast_module.cpu_has_vnni
    for vnni in (True, False):
        fast_module.cpu_has_vnni = lambda: vnni  # read at optimize(), before the loop moves on
        for n in (16, 64):
            start = time.perf_counter()
            fast = tf.optimize(model, precision="int8", compile=True, calibration=calibration[:n])
            with torch.no_grad():
                low = torch.cat([fast(b["video"]) for b in batches])
            seconds = f"{time.perf_counter() - start:.0f} (compile and run)"
            bits = "7-bit activations" if fast.reduce_range else "full-range activations"
            add(f"ours: {fast.method} + compile (torchao), {bits}", n, low, seconds)
    fast_module.cpu_has_vnni = has_vnni
    # ours with 7-bit weights too, as NNCF's overflow fix makes OpenVINO's: does that precision explain its drift?
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    default = x86.get_default_x86_inductor_quantization_config

    def seven_bit_weights(**kw):
        config = default(**kw)
        return dataclasses.replace(config, weight=dataclasses.replace(config.weight, quant_min=-64, quant_max=63))

    x86.get_default_x86_inductor_quantization_config = seven_bit_weights
    start = time.perf_counter()
    fast = tf.optimize(model, precision="int8", compile=True, calibration=calibration)
    with torch.no_grad():
        low = torch.cat([fast(b["video"]) for b in batches])
    bits = "7-bit activations" if fast.reduce_range else "full-range activations"
    seconds = f"{time.perf_counter() - start:.0f} (compile and run)"
    add(f"ours: {fast.method} + compile, 7-bit weights, {bits}", 64, low, seconds)
    x86.get_default_x86_inductor_quantization_config = default
    if args.md:
        with open(args.md, "w") as f:
            f.write("# `python benchmarks/study_openvino_int8.py`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
