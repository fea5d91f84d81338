"""The attention kernel: PyTorch's fused SDPA against two batched matmuls around a softmax, per shape of TimeSformer-B
(8x224, batch 1; temporal also at 16 and 32 frames) and precision, for inference (no grad) and training (forward +
backward), interleaved in one process.

The reference model always uses SDPA; the speed layer (``timesformer.fused.cpu_attention``) takes the matmul kernel
only where this table shows SDPA losing. Prints a markdown table: ratio = SDPA time / matmul time (> 1: matmul
faster), min / median / max over the rounds.

    python benchmarks/bench_attention.py [--threads 2] [--rounds 7]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import cpu_flags, interleaved, machine, ratio_stats

# (name, sequences B, heads k, query length L, key length S) at base 8x224 (d 768, 12 heads of 64), batch 1
SHAPES = (
    ("temporal (divided, axial)", 196, 12, 8, 8),
    ("temporal, 16 frames", 196, 12, 16, 16),
    ("temporal, 32 frames", 196, 12, 32, 32),
    ("width (axial)", 112, 12, 14, 14),
    ("height (axial, + cls)", 112, 12, 15, 15),
    ("spatial (divided, + cls)", 8, 12, 197, 197),
    ("joint", 1, 12, 1569, 1569),
)


def matmul_attention(q, k, v):
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1).to(v.dtype) @ v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; {machine()}; flags: {cpu_flags()}\n")
    print("| shape | precision | pass | SDPA ms (median) | matmul ms (median) | SDPA / matmul min | median | max |")
    print("|---|---|---|---|---|---|---|---|")
    for name, B, heads, L, S in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            for train in (False, True):
                g = torch.Generator().manual_seed(0)
                q, k, v = (torch.randn(B, heads, n, 64, generator=g).to(dtype) for n in (L, S, S))
                if train:
                    for t in (q, k, v):
                        t.requires_grad_(True)

                def run(kernel):
                    def call():
                        with torch.set_grad_enabled(train):
                            out = kernel(q, k, v)
                            if train:
                                out.sum().backward()

                    return call

                times = interleaved(
                    {"sdpa": run(F.scaled_dot_product_attention), "matmul": run(matmul_attention)}, args.rounds
                )
                r = ratio_stats(times["sdpa"], times["matmul"])
                med = {key: sorted(t)[len(t) // 2] * 1e3 for key, t in times.items()}
                print(
                    f"| {name} | {str(dtype).split('.')[-1]} | {'train' if train else 'infer'} | {med['sdpa']:.2f} | "
                    f"{med['matmul']:.2f} | {r['min']:.2f} | {r['median']:.2f} | {r['max']:.2f} |"
                )


if __name__ == "__main__":
    main()
