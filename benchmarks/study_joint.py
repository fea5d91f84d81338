"""Why joint space-time attention misses the rotation pair in `timesformer demo --schemes all` (issue 25, item 6).

Trains the demo's joint model (``timesformer_tiny`` at the demo's size and recipe, seed 0) in variants, each with
``run_demo`` into ``OUT/<variant>``, and tabulates direction accuracy, overall and on ``rotate_cw/rotate_ccw``:

* ``rotary-1000 / -2000 / -4000``: more steps (is it optimisation?);
* ``learned-1000``: the paper's positions, a learned space table plus a learned time table added to every token,
  instead of rotary embeddings, with the official zero-initialised time table;
* ``learned-init-1000``: the same with the time table drawn like the space table (std 0.02, ``time_embed_std``):
  a zero time table makes a joint model exactly blind to frame order at step 0;
* ``divided-learned-init-1000``: divided attention with those learned positions, the control: do learned positions
  learn time at all here in 1000 steps?
* ``rotary-base100-1000``: rotary with base 100 instead of 10000, so that more of joint's time frequencies turn
  visibly over 8 frames (is it how rotary shares out its frequencies?).

It also prints, for the rotary axes of each attention stage at the demo's size, how many frequency pairs of a head
turn by at least 0.1 rad for a one-frame offset. A variant whose ``results.json`` exists is read, not trained again
(`timesformer demo --schemes joint --steps N [--pos-emb learned] --out OUT/<variant>` writes the same layout for
the variants without model_args, so variants may run as separate processes, one per core, before one call gathers
them; their "s per step" then is that of one core each)::

    python benchmarks/study_joint.py --out runs/joint [--only rotary-2000,learned-1000] [--threads 1] [--md FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from timesformer.engine.demo import MODEL_ARGS, run_demo  # noqa: E402
from timesformer.files import write_text_atomic  # noqa: E402
from timesformer.model.embeddings import rotary_angles  # noqa: E402

VARIANTS = {  # name: (scheme, steps, pos_emb, model_args)
    "rotary-1000": ("joint", 1000, None, None),
    "rotary-2000": ("joint", 2000, None, None),
    "rotary-4000": ("joint", 4000, None, None),
    "learned-1000": ("joint", 1000, "learned", None),
    "learned-init-1000": ("joint", 1000, "learned", {"time_embed_std": 0.02}),
    "divided-learned-init-1000": ("divided", 1000, "learned", {"time_embed_std": 0.02}),
    "rotary-base100-1000": ("joint", 1000, None, {"rotary_base": 100.0}),
}
ROTATION = "rotate_cw/rotate_ccw"


def resolving_pairs(axes: str, base: float, frames: int = 8, grid: int = 4, min_angle: float = 0.1) -> int:
    """Frequency pairs of one head that turn by at least ``min_angle`` rad for a one-frame offset."""
    dim_head = MODEL_ARGS["dim"] // MODEL_ARGS["heads"]
    angles = rotary_angles(axes, (frames, grid, grid), dim_head, base=base)  # t h w pairs
    return int(((angles[1, 0, 0] - angles[0, 0, 0]).abs() >= min_angle).sum())


def frequency_table() -> str:
    lines = [
        "| stage (scheme) | rotary axes | pairs per head | pairs turning >= 0.1 rad per frame, base 10000 | base 100 |",
        "|---|---|---|---|---|",
    ]
    pairs = MODEL_ARGS["dim"] // MODEL_ARGS["heads"] // 2
    for stage, axes in (("temporal (divided, axial)", "t"), ("joint; local and global (sparse)", "tyx")):
        lines.append(f"| {stage} | {axes} | {pairs} | {resolving_pairs(axes, 1e4)} | {resolving_pairs(axes, 100.0)} |")
    return "\n".join(lines)


def run_variant(out: Path, name: str) -> dict:
    folder = out / name
    scheme, steps, pos_emb, model_args = VARIANTS[name]
    try:
        record = json.loads((folder / "results.json").read_text())
        same = (
            record["steps"] == steps
            and record.get("val_clips") == 1200
            and record.get("pos_emb") == (pos_emb or "rotary")
            and record.get("model_args") == model_args
        )
        if same:
            return record["schemes"][scheme]
    except (OSError, ValueError, KeyError):
        pass
    print(f"training {name} ...", flush=True)
    return run_demo(str(folder), (scheme,), steps, 0, 1200, None, pos_emb, model_args)[scheme]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/joint")
    ap.add_argument("--only", help="comma list of variants to run (default: all)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--md", help="also write the tables to this markdown file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    rows = [
        "| variant | scheme | steps | positions | direction, all pairs | direction, rotation pair | top-1 | s/step |"
    ]
    rows.append("|---|---|---|---|---|---|---|---|")
    for name in names:
        r = run_variant(Path(args.out), name)
        scheme, steps, pos_emb, model_args = VARIANTS[name]
        positions = (pos_emb or "rotary") + "".join(f", {k} {v:g}" for k, v in (model_args or {}).items())
        rows.append(
            f"| {name} | {scheme} | {steps} | {positions} | {r['direction']:.1%} | {r['pairs'][ROTATION]:.1%} "
            f"| {r['top1']:.1%} | {r['s_per_step']:.3f} |"
        )
    text = (
        f"# joint attention study: {platform.processor() or platform.machine()}, torch {torch.__version__}\n\n"
        + "\n".join(rows)
        + "\n\n"
        + frequency_table()
        + "\n"
    )
    print(text)
    if args.md:
        write_text_atomic(args.md, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
