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


def cmd_convert(args) -> int:
    from pathlib import Path

    from .pretrained import export_hf, load_pretrained, save_pretrained

    dst = Path(args.dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not args.overwrite:
        raise ValueError(f"{dst} exists and is not empty; pass --overwrite to replace its files")
    overrides = {k: v for k, v in dict(heads=args.heads, num_frames=args.num_frames,
                                       image_size=args.image_size).items() if v is not None}
    model = load_pretrained(args.src, format=args.format, **overrides)
    (export_hf if args.to == "hf" else save_pretrained)(model, dst)
    cfg = model.config
    print(f"{args.src} -> {dst} ({args.to}): {cfg.attention} attention, dim {cfg.dim}, depth {cfg.depth}, "
          f"{cfg.num_frames}x{cfg.image_size}, {cfg.num_classes} classes"
          + ("" if cfg.labels else " (no class names)"))
    return 0


def cmd_synth(args) -> int:
    from .data.synthetic import write_synthetic

    if args.num < 1:
        raise ValueError(f"--num must be at least 1; got {args.num}")
    bar = Progress(args.num, f"synth {args.split}")
    root = write_synthetic(args.out, args.num, split=args.split, seed=args.seed, num_frames=args.frames,
                           size=args.size, fps=args.fps, progress=bar.update)
    bar.close()
    print(f"wrote {args.num} clips to {root}/<class>/*.mp4 ({args.frames} frames, {args.size}x{args.size}, "
          f"{args.fps} fps)")
    return 0


class Progress:
    """A one-line progress bar on stderr: count, rate, ETA, and any postfix (loss, lr ...)."""

    def __init__(self, total: int, label: str, stream=None):
        self.total, self.label, self.stream = total, label, stream or sys.stderr
        self.start = self.last = time.perf_counter()
        self.done, self.postfix = 0, ""

    def update(self, done: int, postfix: str = ""):
        self.done, self.postfix = done, postfix
        now = time.perf_counter()
        if now - self.last < 0.2 and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0
        width = 24
        fill = int(width * done / max(self.total, 1))
        self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {done}/{self.total} "
                          f"{rate:.1f}/s ETA {eta:4.0f}s {postfix}  ")
        self.stream.flush()

    def close(self):
        self.update(self.done, self.postfix) if self.done < self.total else None
        self.stream.write("\n")
        self.stream.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timesformer", description="TimeSformer video models: run, convert.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build timesformer_tiny and classify a synthetic clip")
    demo.add_argument("--attention", default="divided", help="divided | joint | space | sparse | axial")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    demo.set_defaults(func=cmd_demo)

    conv = sub.add_parser("convert", help="convert weights: official / HF / mmaction2 / timesformer-pytorch -> "
                                          "ours or HF")
    conv.add_argument("src", help="checkpoint file, HF folder or hub id")
    conv.add_argument("dst", help="output folder")
    conv.add_argument("--to", choices=("native", "hf"), default="native", help="output format (default: native)")
    conv.add_argument("--format", choices=("native", "hf", "official", "mmaction2", "lucidrains"),
                      help="input format (default: detected)")
    conv.add_argument("--heads", type=int, help="attention heads, where shapes can't tell (official: dim // 64)")
    conv.add_argument("--num-frames", type=int, help="frames the checkpoint was built for, where shapes can't tell")
    conv.add_argument("--image-size", type=int, help="image size the checkpoint was built for")
    conv.add_argument("--overwrite", action="store_true", help="replace files in a non-empty output folder")
    conv.set_defaults(func=cmd_convert)

    synth = sub.add_parser("synth", help="write SyntheticMotion clips as mp4 files (VideoFolder layout)")
    synth.add_argument("--out", required=True, help="output folder; clips go to OUT/<split>/<class>/")
    synth.add_argument("--num", type=int, required=True, help="number of clips")
    synth.add_argument("--split", choices=("train", "val", "test"), default="train")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--frames", type=int, default=8)
    synth.add_argument("--size", type=int, default=32)
    synth.add_argument("--fps", type=int, default=8)
    synth.set_defaults(func=cmd_synth)
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
