"""TimeSformer-B (8x224) against its peers: parameters, inference clips/s, train-step time, peak memory.

Each (model, task) runs in its own subprocess with the same thread count, so peak RSS is that task's alone.
Peers: Hugging Face ``transformers`` TimesformerForVideoClassification (default config, random init) and the
seed's ``timesformer-pytorch`` 0.4.1 (dim 768, depth 12, heads 12). Prints a markdown table with ratios
against HF (>1 is better for throughput; <1 is better for time and memory).

    python benchmarks/bench_model.py [--threads 2] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

from timing import median_seconds

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

        return TimeSformer(dim=768, image_size=224, patch_size=16, num_frames=8, num_classes=400, depth=12,
                           heads=12, dim_head=64)
    raise ValueError(name)


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


def run(name: str, task: str, threads: int, quick: bool, device: str = "cpu") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", name, task, "--threads", str(threads), "--device", device] + \
        (["--quick"] if quick else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{name} {task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one timed iteration per cell")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--models", default=",".join(MODELS), help="which of ours,hf,seed")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(worker(*args.worker, quick=args.quick, device=args.device)))
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
    print(f"\ntorch {torch.__version__}, {where}, input 8x3x224x224; ratio = ours / HF "
          f"(throughput: higher is better; time, memory: lower is better)\n")
    print("| metric | ours | HF transformers | timesformer-pytorch | ours / HF |")
    print("|---|---|---|---|---|")
    for label, key, fmt, _ in rows:
        cells = [fmt.format(res[m][key]) if key in res[m] else "n/a" for m in MODELS]
        ratio = f"{res['ours'][key] / res['hf'][key]:.2f}x" if key in res["ours"] and key in res["hf"] else ""
        print(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
