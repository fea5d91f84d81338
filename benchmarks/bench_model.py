"""TimeSformer-B (8x224) against its peers: inference and training speed, interleaved in one process.

Default: ours (with the speed layer, ``timesformer.fused``) and Hugging Face ``transformers``
TimesformerForVideoClassification (default config, random init) take turns, A B A B ..., on the same inputs and
threads: inference at batch 1 and 4 and an AdamW train step at batch 2, in fp32 and bf16 autocast. Prints, per
cell, each model's median seconds and the per-round ratio HF / ours (> 1: ours faster) as min, median, max and
spread, with the CPU's model and flags. ``--baseline REF`` adds the model package as it was at git ``REF``
("before") to the same rounds: the before/after table of a change, measured on one machine in one process.

    python benchmarks/bench_model.py [--threads 2] [--pairs 5] [--baseline c03e1e8] [--cells infer_b1_fp32,...]
    python benchmarks/bench_model.py --memory  # each model alone in a subprocess: peak RSS (and the seed, too)
    python benchmarks/bench_model.py --fast    # the inference fast path (timesformer.optimize) against HF
    python benchmarks/bench_model.py --train   # train steps at batch 2 and 4, fp32 and bf16, and compiled
    python benchmarks/bench_model.py --fast --openvino  # ours against OpenVINO f32 / bf16 / int8, interleaved

``--fast`` prints the CPU, oneDNN's ISA and this machine's fp32 / bf16 / int8 matmul peaks, then batch-1
inference of every path: seconds per clip, the ratio to HF eager bf16 autocast, and achieved GFLOP/s.
``--fast --openvino`` runs our fast paths and OpenVINO's (``timesformer export --format openvino``: f32, bf16, NNCF
int8) in one process, A B A B, each pair at the same precision, and prints each pair's per-round ratio. A precision
the CPU lacks (bf16 without AVX-512 BF16 or AMX) is a skipped row, saying so.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys

from timing import cpu_flags, interleaved, machine, median_seconds, ratio_stats, run_worker

MODELS = ("ours", "hf", "seed")


def build(name: str):
    if name == "ours":
        import timesformer

        return timesformer.create_model("timesformer_base", num_classes=400)
    if name == "hf":
        from transformers import TimesformerConfig, TimesformerForVideoClassification

        hf = TimesformerForVideoClassification(TimesformerConfig(num_labels=400))
        return _Logits(hf)
    if name == "seed":
        from timesformer_pytorch import TimeSformer

        return TimeSformer(
            dim=768, image_size=224, patch_size=16, num_frames=8, num_classes=400, depth=12, heads=12, dim_head=64
        )
    raise ValueError(name)


def hf_peer(model) -> _Logits:
    """HF ``TimesformerForVideoClassification`` with ``model``'s architecture and weights (``config_to_hf`` and the
    ``to_hf`` key map, strictly loaded), on ``model``'s device: the same computation, in HF's code."""
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    from timesformer.convert.hf import to_hf
    from timesformer.pretrained import config_to_hf

    hf = TimesformerForVideoClassification(TimesformerConfig(**config_to_hf(model.config)))
    hf.load_state_dict(to_hf(model.state_dict()), strict=True)
    return _Logits(hf.to(next(model.parameters()).device))


class _Logits:  # HF returns an output object; give every model the same call
    def __init__(self, hf):
        self.hf = hf

    def __call__(self, x):
        return self.hf(pixel_values=x).logits

    def __getattr__(self, item):
        return getattr(self.hf, item)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(name: str, task: str, quick: bool, device: str = "cpu") -> dict:
    import torch

    torch.manual_seed(0)
    model = build(name)
    module = model.hf if isinstance(model, _Logits) else model
    module.to(device)
    out = {"params_m": sum(p.numel() for p in module.parameters()) / 1e6}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if task == "infer":
        module.eval()
        for batch in (1, 4):
            x = torch.randn(batch, 8, 3, 224, 224, device=device)
            for dtype in ("fp32", "bf16"):

                def step():
                    with torch.no_grad(), torch.autocast(device, torch.bfloat16, enabled=dtype == "bf16"):
                        model(x)
                    sync()

                iters = 1 if quick else (5 if batch == 1 else 3)
                out[f"infer_b{batch}_{dtype}"] = batch / median_seconds(step, iters)
    else:
        module.train()
        if task == "train_ckpt":
            if name == "ours":
                model.set_grad_checkpointing(True)
            elif name == "hf":
                model.hf.gradient_checkpointing_enable()
            else:
                raise ValueError("the seed has no gradient checkpointing")
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
        x, y = torch.randn(2, 8, 3, 224, 224, device=device), torch.tensor([1, 2], device=device)
        base = peak_rss_mb() if device == "cpu" else torch.cuda.memory_allocated() / 2**20
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sync()

        out["train_s"] = median_seconds(step, 1 if quick else 3)
        out["model_rss_mb"] = base
    # on CUDA "rss" is the GPU allocator's peak (weights, grads, optimizer state and activations)
    out["peak_rss_mb"] = peak_rss_mb() if device == "cpu" else torch.cuda.max_memory_allocated() / 2**20
    return out


FAST_PATHS = (  # (model, precision, compile): HF's two eager paths, then ours
    ("hf", "fp32", False),
    ("hf", "bf16-autocast", False),
    ("ours", "fp32", False),
    ("ours", "bf16-autocast", False),
    ("ours", "bf16", False),
    ("ours", "int8", False),
    ("ours", "bf16", True),
    ("ours", "int8", True),
)


def fast_worker(name: str, precision: str, compile: bool, quick: bool) -> dict:
    """Seconds per clip at batch 1 on one path (compile time reported apart), and its logits' drift from fp32."""
    import time

    import torch

    import timesformer

    torch.manual_seed(0)
    model = build(name)
    module = model.hf if isinstance(model, _Logits) else model
    module.eval()
    x = torch.randn(1, 8, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
    out = {}
    if precision in ("fp32", "bf16-autocast"):

        def step():
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision != "fp32"):
                return model(x)
    else:
        start = time.perf_counter()
        # static int8 sets its scales from clips: 4 random ones here (the model is random too)
        calibration = torch.randn(4, 8, 3, 224, 224) if precision == "int8" else None
        fast = timesformer.optimize(module, precision=precision, compile=compile, example=x, calibration=calibration)
        out["prepare_s"] = time.perf_counter() - start
        out["compiled"], out["method"] = fast.compiled, fast.method
        step = lambda: fast(x)  # noqa: E731
    out["drift"] = ((step().float() - ref).abs().max() / ref.abs().max()).item()
    out["s"] = median_seconds(step, 1 if quick else 5)
    return out


TRAIN_CELLS = [
    (name, precision, batch, False) for batch in (2, 4) for precision in ("fp32", "bf16") for name in ("hf", "ours")
] + [("ours", precision, 2, True) for precision in ("fp32", "bf16")]


def train_worker(name: str, precision: str, batch: int, compile: bool, quick: bool) -> dict:
    """Seconds per AdamW step (cross-entropy, autocast for bf16) and peak RSS above the built model."""
    import time

    import torch

    torch.manual_seed(0)
    model = build(name)
    module = model.hf if isinstance(model, _Logits) else model
    module.train()
    base = peak_rss_mb()
    forward = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 8, 3, 224, 224), torch.arange(batch)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            logits = forward(x)
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        opt.step()

    start = time.perf_counter()
    step()  # compiles, when compiling
    out = {"first_step_s": time.perf_counter() - start}
    out["s"] = median_seconds(step, 1 if quick else 5)
    out["extra_mb"] = peak_rss_mb() - base
    return out


def train_table(threads: int, quick: bool):
    import torch

    rows = {}
    for cell in TRAIN_CELLS:
        name, precision, batch, compile = cell
        rows[cell] = run(name, "trainstep", threads, quick, extra=[precision, str(batch), str(int(compile))])
        print(f"# {cell}: {rows[cell]}", file=sys.stderr)
    print(f"\ntorch {torch.__version__}, {threads} CPU threads; {machine()}")
    print(
        "TimeSformer-B 8x224, AdamW step (forward, cross-entropy, backward, update), median of 5 after one; memory: "
        "peak RSS above the built model (gradients, AdamW moments, activations)\n"
    )
    print(
        "| batch | precision | HF step (s) | ours step (s) | HF / ours (speed-up) | HF memory (MiB) | "
        "ours memory (MiB) | ours / HF memory |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for batch in (2, 4):
        for precision in ("fp32", "bf16"):
            hf, ours = rows[("hf", precision, batch, False)], rows[("ours", precision, batch, False)]
            print(
                f"| {batch} | {precision} | {hf['s']:.2f} | {ours['s']:.2f} | {hf['s'] / ours['s']:.2f}x | "
                f"{hf['extra_mb']:.0f} | {ours['extra_mb']:.0f} | {ours['extra_mb'] / hf['extra_mb']:.2f}x |"
            )
    print("\n| ours, optim.compile | step (s) | HF eager / ours compiled | first step, compiling (s) | memory (MiB) |")
    print("|---|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        r, hf = rows[("ours", precision, 2, True)], rows[("hf", precision, 2, False)]
        print(
            f"| batch 2 {precision} | {r['s']:.2f} | {hf['s'] / r['s']:.2f}x | {r['first_step_s']:.0f} | "
            f"{r['extra_mb']:.0f} |"
        )


def machine_peaks(quick: bool) -> dict:
    """GFLOP/s of a 1568x768x3072 matmul (the qkv projection of one 8x224 clip) in fp32, bf16 and int8."""
    import torch

    m, k, n = 1568, 768, 3072
    flops = 2 * m * k * n
    out = {}
    for dtype in ("fp32", "bf16", "int8"):
        if dtype == "int8":
            a = torch.randint(-128, 127, (m, k), dtype=torch.int8)
            b = torch.randint(-128, 127, (k, n), dtype=torch.int8)
            fn = lambda: torch._int_mm(a, b)  # noqa: E731
        else:
            t = torch.float32 if dtype == "fp32" else torch.bfloat16
            a, b = torch.randn(m, k, dtype=t), torch.randn(k, n, dtype=t)
            fn = lambda: a @ b  # noqa: E731
        out[dtype] = flops / median_seconds(fn, 3 if quick else 10, warmup=2) / 1e9
    return out


def fast_table(threads: int, quick: bool):
    import torch

    from timesformer import create_model
    from timesformer.engine.demo import gflops_per_clip

    torch.set_num_threads(threads)
    gflop = 2 * gflops_per_clip(create_model("timesformer_base", num_classes=400))  # multiply-adds -> FLOPs
    peaks = machine_peaks(quick)
    rows = {}
    for name, precision, compile in FAST_PATHS:
        rows[(name, precision, compile)] = run(name, "fast", threads, quick, extra=[precision, str(int(compile))])
        print(f"# {name} {precision} compile={compile}: {rows[(name, precision, compile)]}", file=sys.stderr)
    base = rows[("hf", "bf16-autocast", False)]["s"]
    print(f"\ntorch {torch.__version__}, {threads} CPU threads; {machine()}")
    print(
        f"matmul peaks (1568x768x3072): fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f}, int8 "
        f"{peaks['int8']:.0f} GFLOP/s; TimeSformer-B 8x224: {gflop:.0f} GFLOP per clip\n"
    )
    print(
        "| path, batch 1 | s per clip | vs HF bf16 autocast | GFLOP/s | peak of its precision | max logit drift "
        "vs fp32 | compile s |"
    )
    print("|---|---|---|---|---|---|---|")
    for (name, precision, compile), r in rows.items():
        peak = peaks["int8" if precision == "int8" else "fp32" if precision == "fp32" else "bf16"]
        label = f"{'HF' if name == 'hf' else 'ours'} {r.get('method', precision)}{' + compile' if compile else ''}"
        if compile and not r.get("compiled"):
            label += " (compile failed: eager)"
        prep = f"{r['prepare_s']:.0f}" if compile else ""
        print(
            f"| {label} | {r['s']:.3f} | {base / r['s']:.2f}x | {gflop / r['s']:.0f} | {peak:.0f} | "
            f"{r['drift']:.4f} | {prep} |"
        )


OPENVINO_PAIRS = {  # name -> ((our precision, compile), OpenVINO's (precision, int8))
    "fp32": (("fp32", True), ("f32", False)),
    "bf16": (("bf16", True), ("bf16", False)),
    "int8-static": (("int8", True), ("f32", True)),
    "int8-dynamic": (("int8", False), ("f32", True)),
}


def openvino_table(threads: int, pairs: int, which: list[str], calibration_clips: int = 16):
    """Ours (``optimize``, compiled) against OpenVINO's IR at each precision, batch 1, interleaved in this process.
    Calibration for both int8 paths: the same random clips (a random-init model)."""
    import time

    import openvino as ov
    import torch

    import timesformer
    from timesformer.inference.export_openvino import OpenVINOModel, convert_openvino, quantize_openvino

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build("ours").eval()
    x = torch.randn(1, 8, 3, 224, 224)
    calibration = torch.randn(calibration_clips, 8, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    contestants, info, pairs_of, skipped, theirs = {}, {}, [], [], {}
    for key in which:
        (precision, compile), (ov_precision, ov_int8) = OPENVINO_PAIRS[key]
        if precision == "bf16" and not bf16:
            skipped.append("bf16: this CPU has no bf16 (OpenVINO's CPU capabilities lack BF16)")
            continue
        start = time.perf_counter()
        scales = calibration if precision == "int8" else None
        fast = timesformer.optimize(model, precision=precision, compile=compile, example=x, calibration=scales)
        ours_name = f"ours {fast.method}{' + compile' if compile else ''}"
        info[ours_name] = {"prepare_s": time.perf_counter() - start, "compiled": fast.compiled}
        ov_name = f"OpenVINO {'int8 (NNCF)' if ov_int8 else ov_precision}"
        if ov_name not in theirs:  # one IR per precision, whichever of ours it is paired with
            start = time.perf_counter()  # the export's steps, without its check (a random model agrees on nothing)
            converted = convert_openvino(model)
            if ov_int8:
                converted = quantize_openvino(converted, calibration)
            theirs[ov_name] = OpenVINOModel(converted, precision=ov_precision, threads=threads)
            info[ov_name] = {"prepare_s": time.perf_counter() - start, "compiled": theirs[ov_name].precision}
        for name, fn in ((ours_name, lambda fast=fast: fast(x)), (ov_name, lambda m=theirs[ov_name]: m(x))):
            info[name]["drift"] = float((fn().float() - ref).abs().max() / ref.abs().max())
            contestants[name] = fn
        pairs_of.append((ours_name, ov_name))
        print(f"# {ours_name} / {ov_name}: {info[ours_name]} {info[ov_name]}", file=sys.stderr, flush=True)
    times = interleaved(contestants, pairs)
    print(f"\ntorch {torch.__version__}, OpenVINO {ov.__version__}, {threads} CPU threads; {machine()}")
    print(f"flags: {cpu_flags()}")
    print(f"TimeSformer-B 8x224, batch 1, random init; {pairs} interleaved rounds\n")
    print("| path | s per clip (median) | min | spread | drift vs fp32 |\n|---|---|---|---|---|")
    for name, t in times.items():
        t = sorted(t)
        print(f"| {name} | {statistics.median(t):.3f} | {t[0]:.3f} | {t[-1] - t[0]:.3f} | {info[name]['drift']:.4f} |")
    print("\n| ours | OpenVINO | ours / OpenVINO speed, per round (median, min-max) |\n|---|---|---|")
    for ours_name, ov_name in pairs_of:
        r = ratio_stats(times[ov_name], times[ours_name])  # OpenVINO s / ours s: > 1, ours faster
        print(f"| {ours_name} | {ov_name} | {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f}) |")
    for why in skipped:
        print(f"\nskipped: {why}")


CELLS = ("infer_b1_fp32", "infer_b1_bf16", "infer_b4_fp32", "infer_b4_bf16", "train_b2_fp32", "train_b2_bf16")


def baseline_model_package(ref: str):
    """``src/timesformer/model`` as it was at git ``ref``, imported as its own package (it imports only torch,
    einops and itself), so the model before a change runs in the same process as the model after it."""
    import importlib.util
    import io
    import subprocess
    import tarfile
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", ref, "src/timesformer/model"], capture_output=True, check=True
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="timesformer-baseline-"))
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(folder, filter="data")
    package = folder / "src" / "timesformer" / "model"
    name = "timesformer_baseline_model"
    spec = importlib.util.spec_from_file_location(
        name, package / "__init__.py", submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def contestants(baseline: str | None) -> dict:
    """name -> (module, call): ours with the speed layer, HF, and the model at ``baseline`` with ours' weights."""
    import torch

    import timesformer
    from timesformer.fused import fuse

    torch.manual_seed(0)
    ours = timesformer.create_model("timesformer_base", num_classes=400)
    fuse(ours, quiet=True)
    models = {"ours": (ours, ours)}
    hf = build("hf")
    models["hf"] = (hf.hf, hf)
    if baseline:
        package = baseline_model_package(baseline)
        before = package.create_model("timesformer_base", num_classes=400)
        before.load_state_dict(ours.state_dict())
        models["before"] = (before, before)
    return models


def interleaved_table(threads: int, pairs: int, cells: list[str], baseline: str | None, raw: str | None = None):
    import gc

    import torch

    torch.set_num_threads(threads)
    models = contestants(baseline)
    results = {}
    for cell in cells:
        task, batch, precision = cell.split("_")
        batch = int(batch[1:])
        x = torch.randn(batch, 8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        y = torch.arange(batch)
        calls = {}
        for name, (module, call) in models.items():
            autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")
            if task == "infer":
                module.eval()

                def step(call=call, autocast=autocast):
                    with torch.no_grad(), autocast:
                        call(x)
            else:
                module.train()
                opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

                def step(call=call, autocast=autocast, opt=opt, module=module):
                    opt.zero_grad(set_to_none=True)
                    with autocast:
                        logits = call(x)
                    torch.nn.functional.cross_entropy(logits.float(), y).backward()
                    opt.step()

            calls[name] = step
        times = interleaved(calls, pairs)
        results[cell] = times
        medians = ", ".join(f"{n} {sorted(t)[len(t) // 2]:.3f}s" for n, t in times.items())
        print(f"# {cell}: {medians}; per round: {json.dumps(times)}", file=sys.stderr, flush=True)
        del calls
        for module, _ in models.values():
            module.zero_grad(set_to_none=True)
        gc.collect()

    print(f"\ntorch {torch.__version__}, {threads} CPU threads; {machine()}; flags: {cpu_flags()}")
    print(
        f"TimeSformer-B 8x224, {pairs} interleaved rounds after one warm-up ("
        + " ".join(models)
        + "); train = AdamW step; bf16 = autocast. Ratio = HF s / ours s per round (> 1: ours faster)\n"
    )
    head = "| cell | ours s (median) | HF s (median) | HF / ours min | median | max | spread |"
    sep = "|---|---|---|---|---|---|---|"
    if baseline:
        head += f" before ({baseline}) s | before / ours min | median | max |"
        sep += "---|---|---|---|"
    print(head)
    print(sep)
    med = lambda t: sorted(t)[len(t) // 2]  # noqa: E731
    for cell, times in results.items():
        r = ratio_stats(times["hf"], times["ours"])
        row = (
            f"| {cell} | {med(times['ours']):.3f} | {med(times['hf']):.3f} | {r['min']:.2f}x | {r['median']:.2f}x | "
            f"{r['max']:.2f}x | {r['spread']:.2f} |"
        )
        if baseline:
            b = ratio_stats(times["before"], times["ours"])
            row += f" {med(times['before']):.3f} | {b['min']:.3f}x | {b['median']:.3f}x | {b['max']:.3f}x |"
        print(row)
    if raw:  # the per-round seconds a table was made from, with the machine that made them
        info = {"torch": torch.__version__, "threads": threads, "machine": machine(), "flags": cpu_flags()}
        with open(raw, "w") as f:
            json.dump({**info, "baseline": baseline, "pairs": pairs, "seconds": results}, f, indent=1)
    return results


def run(name: str, task: str, threads: int, quick: bool, device: str = "cpu", extra=()) -> dict:
    return run_worker(
        __file__,
        ["--worker", name, task, *extra, "--threads", str(threads), "--device", device]
        + (["--quick"] if quick else []),
        threads,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one timed iteration per cell")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--models", default=",".join(MODELS), help="which of ours,hf,seed")
    ap.add_argument("--fast", action="store_true", help="the inference fast path (timesformer.optimize) vs HF")
    ap.add_argument(
        "--train",
        action="store_true",
        help="train steps vs HF at batch 2 and 4, fp32 and bf16, and ours compiled (optim.compile)",
    )
    ap.add_argument("--openvino", action="store_true", help="with --fast: ours against OpenVINO, interleaved")
    ap.add_argument("--openvino-paths", default=",".join(OPENVINO_PAIRS), help="which of " + ",".join(OPENVINO_PAIRS))
    ap.add_argument("--memory", action="store_true", help="each model alone in a subprocess: peak RSS")
    ap.add_argument("--pairs", type=int, default=5, help="interleaved rounds per cell (default mode)")
    ap.add_argument("--cells", default=",".join(CELLS), help="which of " + ",".join(CELLS))
    ap.add_argument("--baseline", help="a git ref: the model package as it was there joins the rounds as 'before'")
    ap.add_argument("--raw", help="write the per-round seconds (and the machine) to this JSON file")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        if args.worker[1] == "fast":
            name, _, precision, compile = args.worker
            print(json.dumps(fast_worker(name, precision, bool(int(compile)), quick=args.quick)))
        elif args.worker[1] == "trainstep":
            name, _, precision, batch, compile = args.worker
            print(json.dumps(train_worker(name, precision, int(batch), bool(int(compile)), quick=args.quick)))
        else:
            print(json.dumps(worker(*args.worker, quick=args.quick, device=args.device)))
        return
    if args.fast and args.openvino:
        openvino_table(args.threads, args.pairs, args.openvino_paths.split(","))
        return
    if args.fast:
        fast_table(args.threads, args.quick)
        return
    if args.train:
        train_table(args.threads, args.quick)
        return
    if not args.memory:
        interleaved_table(args.threads, args.pairs, [c for c in args.cells.split(",") if c], args.baseline, args.raw)
        return

    import torch

    models = [m for m in args.models.split(",") if m]
    res = {m: {} for m in MODELS}
    for m in models:
        for task in ("infer", "train") + (("train_ckpt",) if m != "seed" else ()):
            r = run(m, task, args.threads, args.quick, args.device)
            res[m]["params_m"] = r["params_m"]
            if task == "infer":
                res[m].update({k: v for k, v in r.items() if k.startswith("infer")})
            else:
                res[m][f"{task}_s"] = r["train_s"]
                res[m][f"{task}_peak_mb"] = r["peak_rss_mb"]
                res[m][f"{task}_extra_mb"] = r["peak_rss_mb"] - r["model_rss_mb"]
            print(f"# {m} {task}: {r}", file=sys.stderr)

    rows = [
        ("parameters (M)", "params_m", "{:.1f}", None),
        ("inference b1 fp32 (clips/s)", "infer_b1_fp32", "{:.3f}", "up"),
        ("inference b4 fp32 (clips/s)", "infer_b4_fp32", "{:.3f}", "up"),
        ("inference b1 bf16 autocast (clips/s)", "infer_b1_bf16", "{:.3f}", "up"),
        ("inference b4 bf16 autocast (clips/s)", "infer_b4_bf16", "{:.3f}", "up"),
        ("train step b2 fp32, AdamW (s)", "train_s", "{:.2f}", "down"),
        ("train peak RSS (MiB)", "train_peak_mb", "{:.0f}", "down"),
        ("train RSS above the built model (MiB)", "train_extra_mb", "{:.0f}", "down"),
        ("train step, grad checkpointing (s)", "train_ckpt_s", "{:.2f}", "down"),
        ("train peak RSS, grad checkpointing (MiB)", "train_ckpt_peak_mb", "{:.0f}", "down"),
        ("train RSS above the built model, checkpointing (MiB)", "train_ckpt_extra_mb", "{:.0f}", "down"),
    ]
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.threads} CPU threads"
    print(
        f"\ntorch {torch.__version__}, {where}, input 8x3x224x224; ratio = ours / HF "
        f"(throughput: higher is better; time, memory: lower is better)\n"
    )
    print("| metric | ours | HF transformers | timesformer-pytorch | ours / HF |")
    print("|---|---|---|---|---|")
    for label, key, fmt, _ in rows:
        cells = [fmt.format(res[m][key]) if key in res[m] else "n/a" for m in MODELS]
        ratio = f"{res['ours'][key] / res['hf'][key]:.2f}x" if key in res["ours"] and key in res["hf"] else ""
        print(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
