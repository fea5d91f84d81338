"""The main job: divided space-time attention solves motion classes that space-only attention cannot.

Trains ``timesformer_tiny`` once per attention scheme on ``SyntheticMotion``: the same clips in the same order,
the same fixed number of steps and the same optimiser, so the table is a function of the seed alone and not of
the machine's speed. Each model is then evaluated on held-out clips: top-1 on all classes, top-1 on the
time-reversed pair classes, and direction accuracy (does the model score the true class above its time-reversed
twin; chance 50 %), overall and per pair. ``schemes=SCHEMES`` is the paper's Table 1 in miniature.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import collate
from ..data.synthetic import CLASSES, REVERSED_PAIRS
from ..errors import UserError
from ..files import write_json_atomic, write_text_atomic
from .config import DataConfig, OptimConfig, RunConfig, to_dict
from .evaluate import predict_views
from .loop import fit
from .metrics import confusion_matrix, direction_accuracy, topk_accuracy

log = logging.getLogger(__name__)

SCHEMES = ("space", "joint", "divided", "sparse", "axial")  # the paper's Table 1, in its order
NAMES = {
    "space": "space-only (S)",
    "joint": "joint space-time (ST)",
    "divided": "divided space-time (T+S)",
    "sparse": "sparse local-global (L+G)",
    "axial": "axial (T+W+H)",
}
# Table 1 of the paper (IN-21k init, 8x224, 3 views): parameters (M), K400 top-1, SSv2 top-1
PAPER_TABLE1 = {
    "space": (85.9, 76.9, 36.6),
    "joint": (85.9, 77.4, 58.5),
    "divided": (121.4, 78.0, 59.5),
    "sparse": (121.4, 75.9, 56.3),
    "axial": (156.8, 73.5, 56.2),
}
STEPS = 1000  # optimiser steps per model
# timesformer_tiny made narrower (dim 96, 3 heads): in a GPU sweep it learned every reversed pair within 1000 steps
# on all 4 seeds tried, where dim 128 needs as many steps at 1.4x the cost per step
MODEL_ARGS = dict(dim=96, heads=3)
VAL_CLIPS = 1200


def demo_config(
    attention: str,
    *,
    out: str,
    steps: int = STEPS,
    seed: int = 0,
    val_clips: int = VAL_CLIPS,
    pos_emb: str | None = None,
    model_args: dict | None = None,
) -> RunConfig:
    """The demo's run: identical for every scheme apart from ``attention``. One epoch of fresh clips, so every
    clip is seen once; warmup then cosine decay. fp32: at this size it is faster than bf16 autocast on CPUs, and
    its results move less from one machine to another. ``pos_emb`` replaces the preset's rotary embeddings
    (``"learned"``: the paper's space and time tables); ``model_args`` overrides more of the preset (studies)."""
    batch = 32
    overrides = {**({"pos_emb": pos_emb} if pos_emb else {}), **(model_args or {})}
    return RunConfig(
        name=attention,
        out=out,
        model="timesformer_tiny",
        model_args={**MODEL_ARGS, "attention": attention, **overrides},
        data=DataConfig(
            kind="synthetic",
            num_frames=8,
            synthetic_train=steps * batch,
            synthetic_val=val_clips,
            synthetic_size=32,
            workers=_worker_count(),
        ),
        optim=OptimConfig(
            optimizer="adamw",
            lr=1e-3,
            min_lr=1e-5,
            weight_decay=0.05,
            schedule="cosine",
            warmup_steps=50,
            epochs=1,
            batch_size=batch,
            precision="fp32",
            seed=seed,
            log_every=10,
        ),
    )


def _worker_count() -> int:
    """One loader process drawing clips beside the training step (9 % faster on 2 cores; the same clips in the same
    order) where workers fork; where they spawn, a script without a ``__main__`` guard would fail: none."""
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    return 1 if method == "fork" else 0


def recipe(cfg: RunConfig) -> dict:
    """What decides a demo run's results: its config without the output folder and the loader's process count."""
    d = json.loads(json.dumps(to_dict(cfg)))  # as it reads back from results.json (tuples as lists)
    d.pop("out")
    d["data"].pop("workers")
    return d


def held_out_scores(model, cfg: RunConfig, classes=CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits: n classes, labels: n)`` of the run's held-out SyntheticMotion clips of ``classes``, computed
    wherever the model is (the CPU, or the GPU it was trained on)."""
    from ..data import SyntheticMotion

    val = SyntheticMotion(
        cfg.data.synthetic_val,
        num_frames=cfg.data.num_frames,
        size=cfg.data.synthetic_size,
        seed=cfg.optim.seed,
        split="val",
        classes=classes,
        mean=model.config.mean,
        std=model.config.std,
    )
    loader = DataLoader(val, batch_size=100, collate_fn=collate)
    logits, labels, _ = predict_views(model, loader, next(model.parameters()).device, cfg.optim.precision)
    keys = sorted(logits)
    return torch.stack([logits[k] for k in keys]), torch.tensor([int(labels[k]) for k in keys])


def evaluate_demo(model, cfg: RunConfig) -> dict:
    """Top-1, top-1 on the reversed pairs, direction accuracy (overall and per pair) and the confusion matrix on
    held-out clips."""
    scores, y = held_out_scores(model, cfg)
    twins = {c for p in REVERSED_PAIRS for c in p}
    paired = torch.tensor([int(v) in twins for v in y])
    pairs = {}
    for a, b in REVERSED_PAIRS:
        rows = (y == a) | (y == b)
        pairs[f"{CLASSES[a]}/{CLASSES[b]}"] = direction_accuracy(scores[rows], y[rows], REVERSED_PAIRS)
    return {
        "top1": topk_accuracy(scores, y),
        "top1_pairs": topk_accuracy(scores[paired], y[paired]),
        "direction": direction_accuracy(scores, y, REVERSED_PAIRS),
        "pairs": pairs,
        "confusion": confusion_matrix(scores.argmax(1), y, scores.shape[1]).tolist(),
        "videos": len(y),
    }


def gflops_per_clip(model) -> float:
    """Multiply-adds of one clip's forward pass, in G (the paper's and fvcore's convention)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..model import TimeSformer

    cfg = model.config
    # attention as matmuls, counted on any backend; frozen rather than no_grad, which the counter's module
    # tracker can't take for a parameter that reaches an op unchanged
    reference = TimeSformer(cfg.replace(attn_impl="math")).eval().requires_grad_(False)
    clip = torch.zeros(1, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as counter:
        reference(clip)
    return counter.get_total_flops() / 2 / 1e9


def check_demo(schemes, steps: int, val_clips: int) -> tuple:
    """The schemes as a tuple, or a ``ValueError`` naming what was expected and what came."""
    schemes = tuple(schemes)
    if not schemes or any(s not in SCHEMES for s in schemes) or len(set(schemes)) != len(schemes):
        raise UserError(f"schemes: 'all' or distinct names from {','.join(SCHEMES)}; got {','.join(schemes) or 'none'}")
    if steps < 1 or val_clips < len(CLASSES):
        raise UserError(
            f"steps must be at least 1 and val clips at least {len(CLASSES)} (one per class); got "
            f"{steps} and {val_clips}"
        )
    return schemes


def run_demo(
    out: str = "runs/demo",
    schemes=("divided", "space"),
    steps: int = STEPS,
    seed: int = 0,
    val_clips: int = VAL_CLIPS,
    progress_factory=None,
    pos_emb: str | None = None,
    model_args: dict | None = None,
) -> dict:
    """Train and evaluate one model per scheme; writes ``results.json``, ``table.md``, loss curves, confusion
    matrices and, for several schemes, accuracy against GFLOPs to ``out``.

    Args:
        progress_factory: ``callable(scheme, index, count)`` returning a bar with ``advance(step, total, postfix)``
            and ``close()``.
    """
    from ..viz import plot_confusion, plot_loss_curves, plot_schemes

    schemes = check_demo(schemes, steps, val_clips)
    results, recipes = {}, {}
    for index, attention in enumerate(schemes):
        cfg = demo_config(
            attention, out=out, steps=steps, seed=seed, val_clips=val_clips, pos_emb=pos_emb, model_args=model_args
        )
        recipes[attention] = recipe(cfg)
        bar = progress_factory(attention, index, len(schemes)) if progress_factory else None
        stamps = []  # the time of every optimiser step: seconds per step without set-up or evaluation

        def progress(step, total, postfix=""):
            stamps.append(time.perf_counter())
            if bar:
                bar.advance(step, total, postfix)

        started = time.perf_counter()
        run = fit(cfg, overwrite=True, progress=progress, validate_epochs=False)  # scored once, below
        seconds = time.perf_counter() - started
        if bar:
            bar.close()
        model = run["model"]
        res = evaluate_demo(model, cfg)
        per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else seconds / max(len(stamps), 1)
        res.update(
            steps=run["step"],
            train_s=round(seconds, 1),
            s_per_step=per_step,
            params_m=sum(p.numel() for p in model.parameters()) / 1e6,
            gflops=gflops_per_clip(model),
        )
        results[attention] = res
        plot_confusion(
            res["confusion"],
            run["classes"],
            Path(out) / f"confusion_{attention}.png",
            title=f"{NAMES[attention]}: top-1 {res['top1']:.1%}, direction {res['direction']:.1%}",
        )
    plot_loss_curves({NAMES[a]: Path(out) / a / "metrics.jsonl" for a in results}, Path(out) / "loss_curves.png")
    if len(results) > 2:
        plot_schemes(results, NAMES, Path(out) / "schemes.png")
    summary = {a: {k: v for k, v in r.items() if k != "confusion"} for a, r in results.items()}
    record = {"seed": seed, "steps": steps, "val_clips": val_clips, "pos_emb": pos_emb or "rotary", "schemes": summary}
    if model_args:
        record["model_args"] = model_args
    record["recipes"] = recipes
    write_text_atomic(Path(out) / "table.md", format_tables(results) + "\n")
    write_json_atomic(Path(out) / "results.json", record)  # last: its presence says the run is complete
    return results


def format_tables(results: dict) -> str:
    """The results table, the per-pair direction table and, for several schemes, the paper's Table 1 beside ours."""
    tables = [format_table(results), format_pairs(results)]
    if len(results) > 2:
        tables.append(format_table1(results))
    return "\n\n".join(tables)


def format_table(results: dict) -> str:
    lines = [
        "| attention | steps | top-1, all 12 classes | top-1, reversed-pair classes | direction accuracy | "
        "worst pair |",
        "|---|---|---|---|---|---|",
    ]
    for attention, r in results.items():
        worst = min(r["pairs"], key=r["pairs"].get)
        lines.append(
            f"| {NAMES[attention]} | {r['steps']} | {r['top1']:.1%} | {r['top1_pairs']:.1%} | "
            f"{r['direction']:.1%} | {worst} {r['pairs'][worst]:.1%} |"
        )
    return "\n".join(lines)


def format_pairs(results: dict) -> str:
    """Direction accuracy per reversed pair (rows) and scheme (columns)."""
    pairs = list(next(iter(results.values()))["pairs"])
    lines = ["| direction accuracy | " + " | ".join(NAMES[a] for a in results) + " |", "|---|" + "---|" * len(results)]
    for pair in pairs:
        lines.append(f"| {pair} | " + " | ".join(f"{r['pairs'][pair]:.1%}" for r in results.values()) + " |")
    return "\n".join(lines)


def format_table1(results: dict) -> str:
    """Ours (SyntheticMotion, from scratch, equal steps) beside the paper's Table 1 (K400 and SSv2 top-1)."""
    lines = [
        "| scheme | params | GFLOPs per clip | s per step | direction accuracy | top-1 | paper: params | "
        "paper: K400 top-1 | paper: SSv2 top-1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for attention, r in results.items():
        params, k400, ssv2 = PAPER_TABLE1[attention]
        lines.append(
            f"| {NAMES[attention]} | {r['params_m']:.2f}M | {r['gflops']:.3f} | {r['s_per_step']:.3f} | "
            f"{r['direction']:.1%} | {r['top1']:.1%} | {params}M | {k400} | {ssv2} |"
        )
    return "\n".join(lines)


# --- several seeds --------------------------------------------------------------------------------------------
def run_seeds(
    out: str,
    schemes=SCHEMES,
    steps: int = STEPS,
    seeds=(0, 1, 2),
    val_clips: int = VAL_CLIPS,
    progress_factory=None,
    pos_emb: str | None = None,
) -> dict:
    """``run_demo`` once per seed, into ``out/seed<S>``; returns ``{seed: {scheme: summary}}`` and writes the
    mean ± s.d. tables to ``out/table.md`` and every figure to ``out/results.json``.

    A seed whose ``results.json`` (written last, atomically) holds the same seed and, for every scheme, the same
    recipe (``recipe``: the whole run config but its folder) is read instead of trained again, and the log says so:
    an interrupted sweep goes on where it stopped, and seeds may run as separate processes (one per core) before one
    call gathers them. A code change that moves the results without changing the config is not detected: delete the
    folder to train again.

    Args:
        progress_factory: ``callable(label, index, count)``, as for ``run_demo``; ``label`` names scheme and seed.
    """
    schemes = check_demo(schemes, steps, val_clips)
    seeds = tuple(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise UserError("seeds: at least one; got none")
    per_seed = {}
    for seed in seeds:
        folder = Path(out) / f"seed{seed}"
        done = _finished_seed(folder, seed, schemes, steps, val_clips, pos_emb)
        if done is not None:
            log.info("seed %d: read from %s (finished, same recipe)", seed, folder / "results.json")
        else:
            factory = None
            if progress_factory:

                def factory(scheme, i, n, seed=seed):
                    return progress_factory(f"{scheme} seed {seed}", i, n)

            run_demo(str(folder), schemes, steps, seed, val_clips, factory, pos_emb)
            done = _finished_seed(folder, seed, schemes, steps, val_clips, pos_emb)
            if done is None:
                raise RuntimeError(f"{folder / 'results.json'}: not the run just trained")
        per_seed[seed] = done
    summary = {
        "steps": steps,
        "val_clips": val_clips,
        "pos_emb": pos_emb or "rotary",
        "seeds": list(seeds),
        "mean_sd": {a: seed_stats([per_seed[s][a] for s in seeds]) for a in schemes},
        "per_seed": {str(s): per_seed[s] for s in seeds},
    }
    write_text_atomic(Path(out) / "table.md", format_seed_tables(per_seed) + "\n")
    write_json_atomic(Path(out) / "results.json", summary)
    return per_seed


def _finished_seed(
    folder: Path, seed: int, schemes: tuple, steps: int, val_clips: int, pos_emb: str | None
) -> dict | None:
    """``{scheme: summary}`` of a finished ``run_demo`` in ``folder`` with this seed and these schemes' recipes,
    else None."""
    try:
        record = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    recipes = record.get("recipes") or {}
    wanted = {
        a: recipe(demo_config(a, out="", steps=steps, seed=seed, val_clips=val_clips, pos_emb=pos_emb)) for a in schemes
    }
    same = (
        record.get("seed") == seed
        and "model_args" not in record
        and all(recipes.get(a) == wanted[a] and a in record.get("schemes", {}) for a in schemes)
    )
    return {a: record["schemes"][a] for a in schemes} if same else None


METRICS = ("direction", "top1", "top1_pairs", "s_per_step")


def seed_stats(runs: list[dict]) -> dict:
    """Mean and sample s.d. (0 for one run) of each metric and of each pair's direction accuracy over ``runs``."""

    def stats(values):
        values = torch.tensor(values, dtype=torch.float64)
        return {"mean": values.mean().item(), "sd": values.std().item() if len(values) > 1 else 0.0}

    out = {m: stats([r[m] for r in runs]) for m in METRICS}
    out["pairs"] = {p: stats([r["pairs"][p] for r in runs]) for p in runs[0]["pairs"]}
    out["values"] = {m: [r[m] for r in runs] for m in ("direction", "top1")}
    return out


def _pm(s: dict) -> str:
    return f"{s['mean']:.1%} ± {s['sd']:.1%}"


def format_seed_tables(per_seed: dict) -> str:
    """Table 1 over seeds (mean ± s.d., and each seed's direction accuracy) beside the paper's, then direction
    accuracy per reversed pair (mean ± s.d.)."""
    seeds = list(per_seed)
    schemes = list(per_seed[seeds[0]])
    stats = {a: seed_stats([per_seed[s][a] for s in seeds]) for a in schemes}
    first = per_seed[seeds[0]]
    seed_names = "/".join(str(s) for s in seeds)
    lines = [
        f"| scheme | params | GFLOPs per clip | direction accuracy, mean ± s.d. | direction, seeds {seed_names} | "
        "top-1, mean ± s.d. | s per step | paper: K400 top-1 | paper: SSv2 top-1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a in schemes:
        _, k400, ssv2 = PAPER_TABLE1[a]
        each = " / ".join(f"{v:.1%}" for v in stats[a]["values"]["direction"])
        lines.append(
            f"| {NAMES[a]} | {first[a]['params_m']:.2f}M | {first[a]['gflops']:.3f} | {_pm(stats[a]['direction'])} | "
            f"{each} | {_pm(stats[a]['top1'])} | {stats[a]['s_per_step']['mean']:.3f} | {k400} | {ssv2} |"
        )
    pairs = list(first[schemes[0]]["pairs"])
    table2 = [
        f"| direction accuracy ({len(seeds)} seeds) | " + " | ".join(NAMES[a] for a in schemes) + " |",
        "|---|" + "---|" * len(schemes),
    ]
    for p in pairs:
        table2.append(f"| {p} | " + " | ".join(_pm(stats[a]["pairs"][p]) for a in schemes) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(table2)
