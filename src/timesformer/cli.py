"""The ``timesformer`` command line. Builds on everything else; nothing imports it."""
from __future__ import annotations

import argparse
import sys
import time


def cmd_demo(args) -> int:
    import torch

    from .model import create_model

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads) if args.threads else None
    model = create_model("timesformer_tiny", attention=args.attention).eval()
    cfg = model.config
    clip = torch.randn(1, cfg.num_frames, cfg.channels, cfg.image_size, cfg.image_size)
    with torch.inference_mode():
        model(clip)  # warm-up
        start = time.perf_counter()
        logits = model(clip)
        took = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    print(f"model      timesformer_tiny ({cfg.attention} attention, {cfg.pos_emb} embeddings, {params / 1e6:.2f}M params)")
    print(f"input      {tuple(clip.shape)} (b t c H W), a random clip")
    print(f"output     {tuple(logits.shape)} logits")
    print(f"predicted  class {int(logits.argmax(-1))} (p={logits.softmax(-1).max().item():.3f}, untrained weights)")
    print(f"time       {took * 1000:.1f} ms for one forward pass on {torch.get_num_threads()} CPU thread(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timesformer", description="TimeSformer video models: run, convert.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build timesformer_tiny and classify a synthetic clip")
    demo.add_argument("--attention", default="divided", help="divided | joint | space | sparse | axial")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # bad input: one clear line, exit code 2
        print(f"timesformer {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
