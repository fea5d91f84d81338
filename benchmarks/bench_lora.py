"""LoRA against a full fine-tune at base 8x224: trainable parameters, peak memory and the training step's time.

Both are the training engine's own set-up: the pretrained-shape base model with a new head, ``add_lora`` (rank 8
on qkv, proj, fc1, fc2, temporal_fc; the head in full) or every parameter trained, AdamW over what trains
(``build_optimizer``), one fp32 step = forward, cross-entropy, backward, optimiser step. Step times come from
rounds A B A B in one process; peak memory from one process per contestant (its own peak RSS, and the RSS above
the built model), and the bytes of gradients and AdamW state that training holds for what it trains.

    python benchmarks/bench_lora.py [--rounds 4] [--batch 2] [--rank 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from timing import interleaved, machine, ratio_stats, run_worker

FRAMES, SIZE, CLASSES = 8, 224, 101


def build(kind: str, rank: int):
    """``(model, optimizer)`` for a full fine-tune or LoRA."""
    from timesformer import create_model
    from timesformer.engine.lora import add_lora
    from timesformer.engine.optim import build_optimizer

    torch.manual_seed(0)
    model = create_model("timesformer_base", num_classes=CLASSES, temporal_fc=True).train()
    if kind == "lora":
        add_lora(model, rank)
    optimizer = build_optimizer(model, name="adamw", lr=1e-4, weight_decay=0.05)
    return model, optimizer


def step_fn(model, optimizer, batch: int):
    video = torch.randn(batch, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    label = torch.arange(batch) % CLASSES

    def step():
        loss = F.cross_entropy(model(video), label)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def worker(kind: str, batch: int, rank: int) -> None:
    model, optimizer = build(kind, rank)
    built = current_rss_mib()
    step = step_fn(model, optimizer, batch)
    for _ in range(2):  # the second step holds the optimiser's state too
        step()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tensors = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    state = sum(t.numel() * t.element_size() for t in tensors)
    grads_and_state = (trainable * 4 + state) / 2**20  # what training holds for the trained weights alone
    print(
        json.dumps(
            {
                "peak_mib": rss_mib(),
                "above_built_mib": rss_mib() - built,
                "trainable": trainable,
                "grads_state_mib": grads_and_state,
            }
        )
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", choices=("full", "lora"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, args.batch, args.rank)
        return

    flags = ["--batch", str(args.batch), "--rank", str(args.rank)]
    memory = {kind: run_worker(__file__, ["--worker", kind, *flags], args.threads) for kind in ("full", "lora")}
    contestants = {kind: step_fn(*build(kind, args.rank), args.batch) for kind in ("full", "lora")}
    started = time.perf_counter()
    times = interleaved(contestants, args.rounds)
    speed = ratio_stats(times["full"], times["lora"])  # > 1: LoRA's step is faster
    print(f"machine: {machine()}; torch threads {args.threads}; timing took {time.perf_counter() - started:.0f} s")
    print(f"timesformer_base {FRAMES}x{SIZE}, {CLASSES} classes, batch {args.batch}, fp32, AdamW, rank {args.rank}")
    print(f"{args.rounds} rounds of full, LoRA steps\n")
    full, lora = memory["full"], memory["lora"]
    print("| | full fine-tune | LoRA | LoRA / full |")
    print("|---|---|---|---|")
    print(
        f"| trainable parameters | {full['trainable'] / 1e6:.2f} M | {lora['trainable'] / 1e6:.3f} M | "
        f"{lora['trainable'] / full['trainable']:.4f}x |"
    )
    peak = lora["peak_mib"] / full["peak_mib"]
    print(f"| peak RSS (MiB) | {full['peak_mib']:.0f} | {lora['peak_mib']:.0f} | {peak:.2f}x |")
    print(
        f"| RSS above the built model (MiB) | {full['above_built_mib']:.0f} | {lora['above_built_mib']:.0f} | "
        f"{lora['above_built_mib'] / full['above_built_mib']:.2f}x |"
    )
    a, b = full["grads_state_mib"], lora["grads_state_mib"]
    print(f"| gradients + AdamW state (MiB) | {a:.0f} | {b:.1f} | {b / a:.4f}x |")
    full_s, lora_s = statistics.median(times["full"]), statistics.median(times["lora"])
    print(
        f"| step (s, median) | {full_s:.2f} | {lora_s:.2f} | {lora_s / full_s:.2f}x "
        f"(full/LoRA per round: min {speed['min']:.2f}x, median {speed['median']:.2f}x, spread {speed['spread']:.2f}) |"
    )


if __name__ == "__main__":
    main()
