"""``timesformer demo --transfer``: does pretraining on SyntheticMotion help a task it never saw?

The demo's divided model is pretrained on the 12 motions (or its checkpoint reused), then trained on six new ones
(``TRANSFER_CLASSES``: a diagonal move, a zig-zag, an orbit, each with its time reversal) from a few clips per
class, five ways at equal steps: from scratch, a linear probe (the head alone), a full fine-tune, LoRA, and a full
fine-tune with the recipe (RandAugment n2 m9 and MixUp/CutMix). Each is scored on held-out clips of the new task:
top-1 and direction accuracy (the true class above its reversal; chance 50 %). Everything follows from the seed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ..data.synthetic import TRANSFER_CLASSES
from ..files import write_json_atomic, write_text_atomic
from .config import DataConfig, OptimConfig, RunConfig
from .demo import MODEL_ARGS, demo_config, held_out_scores
from .loop import fit
from .metrics import direction_accuracy, topk_accuracy

METHODS = {  # name -> (from the pretrained model, run settings, optimiser settings)
    "scratch": (False, {}, dict(lr=1e-3)),
    "linear probe": (True, dict(freeze_backbone=True), dict(lr=1e-2)),
    "full fine-tune": (True, {}, dict(lr=5e-4)),
    "LoRA (rank 8)": (True, dict(lora=8), dict(lr=2e-3)),
    "full fine-tune + recipe": (True, dict(data=dict(randaugment_n=2, randaugment_m=9, mixup=0.8)), dict(lr=5e-4)),
}
PAIRS = ((0, 1), (2, 3), (4, 5))  # TRANSFER_CLASSES' reversed pairs
SHOTS, STEPS, PRETRAIN_STEPS, VAL_CLIPS, BATCH = 8, 150, 1000, 600, 16


def pretrain(out: str, *, seed: int, steps: int, progress=None) -> Path:
    """The demo's divided model after ``steps`` steps: trained in ``out/pretrain_<seed>_<steps>``, or taken from
    there when an earlier call finished it (``resume="auto"``)."""
    cfg = demo_config("divided", out=out, steps=steps, seed=seed)
    cfg.name = f"pretrain_{seed}_{steps}"
    fit(cfg, resume="auto", progress=progress, validate_epochs=False)
    return Path(out) / cfg.name / "last"


def transfer_config(
    method: str, *, out: str, pretrained: Path, seed: int, shots: int, steps: int, val_clips: int = VAL_CLIPS
) -> RunConfig:
    """One method's run: ``shots`` clips per new class, ``steps`` optimiser steps in whole epochs."""
    from_pretrained, settings, optim = METHODS[method]
    clips = shots * len(TRANSFER_CLASSES)
    batch = min(BATCH, clips)
    data = dict(
        kind="synthetic",
        num_frames=8,
        synthetic_train=clips,
        synthetic_val=val_clips,
        synthetic_size=32,
        synthetic_classes=list(TRANSFER_CLASSES),
        **settings.get("data", {}),
    )
    return RunConfig(
        name=method.split(" (")[0].replace(" + ", "_").replace(" ", "_").lower(),
        out=out,
        model="timesformer_tiny",
        model_args={} if from_pretrained else dict(MODEL_ARGS, attention="divided"),
        pretrained=str(pretrained) if from_pretrained else None,
        **{k: v for k, v in settings.items() if k != "data"},
        data=DataConfig(**data),
        optim=OptimConfig(
            optimizer="adamw",
            weight_decay=0.05,
            schedule="cosine",
            warmup_steps=10,
            min_lr=1e-6,
            epochs=math.ceil(steps / (clips // batch)),
            batch_size=batch,
            precision="fp32",
            seed=seed,
            log_every=5,
            **optim,
        ),
    )


def evaluate_transfer(model, cfg: RunConfig) -> dict:
    """Top-1 and direction accuracy on held-out clips of the new task."""
    scores, y = held_out_scores(model, cfg, TRANSFER_CLASSES)
    return {"top1": topk_accuracy(scores, y), "direction": direction_accuracy(scores, y, PAIRS), "videos": len(y)}


def run_transfer(
    out: str = "runs/demo",
    *,
    seed: int = 0,
    shots: int = SHOTS,
    steps: int = STEPS,
    pretrain_steps: int = PRETRAIN_STEPS,
    val_clips: int = VAL_CLIPS,
    progress_factory=None,
) -> dict:
    """Pretrain (or reuse), then every method of ``METHODS``; writes ``transfer/results.json``, ``table.md`` and
    ``transfer.png`` under ``out``. ``progress_factory(name, index, count)`` as ``run_demo``'s."""
    folder = Path(out) / "transfer"
    bar = progress_factory("pretrain", 0, len(METHODS) + 1) if progress_factory else None
    pretrained = pretrain(out, seed=seed, steps=pretrain_steps, progress=bar.advance if bar else None)
    if bar:
        bar.close()
    results = {}
    for index, method in enumerate(METHODS):
        cfg = transfer_config(
            method, out=str(folder), pretrained=pretrained, seed=seed, shots=shots, steps=steps, val_clips=val_clips
        )
        bar = progress_factory(method, index + 1, len(METHODS) + 1) if progress_factory else None
        started = time.perf_counter()
        run = fit(cfg, overwrite=True, progress=bar.advance if bar else None, validate_epochs=False)
        seconds = time.perf_counter() - started
        if bar:
            bar.close()
        model = run["model"]
        results[method] = {
            **evaluate_transfer(model, cfg),
            "steps": run["step"],
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "seconds": round(seconds, 1),
        }
    write_json_atomic(
        folder / "results.json",
        {"seed": seed, "shots": shots, "steps": steps, "pretrain_steps": pretrain_steps, "methods": results},
    )
    write_text_atomic(folder / "table.md", format_transfer(results, shots) + "\n")
    from ..viz import plot_transfer

    plot_transfer(results, folder / "transfer.png", title=f"{shots} clips per class, {steps} steps each")
    return results


def format_transfer(results: dict, shots: int) -> str:
    lines = [
        f"| {shots} clips per new class | top-1, 6 new motions | direction accuracy | trainable parameters | "
        "steps | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        lines.append(
            f"| {method} | {r['top1']:.1%} | {r['direction']:.1%} | {r['trainable']:,} | {r['steps']} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines)
