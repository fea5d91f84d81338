"""PNG figures written atomically. matplotlib is an optional extra (``pip install 'timesformer[plot]'``)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("figures need matplotlib: pip install 'timesformer[plot]'") from None
    return plt


def _save(fig, path: Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_loss_curves(runs: dict[str, str | os.PathLike], out: str | os.PathLike, title: str = "training loss"):
    """One line per run (``label -> metrics.jsonl``): loss against step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, path in runs.items():
        rows = [r for r in read_metrics(path) if "loss" in r and "step" in r]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out)
    plt.close(fig)


def plot_confusion(confusion, classes: list[str], out: str | os.PathLike, title: str = "confusion matrix"):
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    import torch

    plt = _pyplot()
    cm = torch.as_tensor(confusion, dtype=torch.float64)
    norm = cm / cm.sum(1, keepdim=True).clamp(min=1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(0.45 * n + 2.5, 0.45 * n + 2))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, out)
    plt.close(fig)


def plot_schemes(
    results: dict,
    names: dict,
    out: str | os.PathLike,
    title: str = "attention schemes at equal steps (SyntheticMotion)",
):
    """Direction accuracy and top-1 against GFLOPs per clip, a point per scheme (``results[scheme]`` holds
    ``gflops``, ``direction`` and ``top1``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["gflops"] for r in results.values()]
    ax.scatter(x, [100 * r["direction"] for r in results.values()], marker="o", label="direction accuracy")
    ax.scatter(
        x,
        [100 * r["top1"] for r in results.values()],
        marker="s",
        facecolors="none",
        edgecolors="C1",
        label="top-1, 12 classes",
    )
    for scheme, r in results.items():
        ax.annotate(
            names.get(scheme, scheme),
            (r["gflops"], 100 * r["direction"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=7,
        )
    ax.axhline(50, color="gray", linestyle=":", linewidth=1)
    ax.text(max(x), 49, "chance (direction)", fontsize=7, color="gray", ha="right", va="top")
    ax.set_xlabel("GFLOPs per clip (multiply-adds)")
    ax.set_ylabel("accuracy on held-out clips (%)")
    ax.set_ylim(min(45, ax.get_ylim()[0]), 102)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    _save(fig, out)
    plt.close(fig)


def plot_transfer(results: dict, out: str | os.PathLike, title: str = ""):
    """Top-1 and direction accuracy per method, bars side by side (``results[method]`` holds ``top1`` and
    ``direction``), with the trainable parameters under each method's name."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(results)
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [100 * r["top1"] for r in results.values()], width=0.4, label="top-1, 6 classes")
    ax.bar([i + 0.2 for i in x], [100 * r["direction"] for r in results.values()], width=0.4, label="direction")
    ax.set_xticks(list(x), [f"{n}\n{results[n]['trainable']:,} trained" for n in names], fontsize=7)
    ax.axhline(50, color="gray", linestyle=":", linewidth=1)
    ax.set_ylabel("accuracy on held-out clips (%)")
    ax.set_ylim(0, 102)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, out)
    plt.close(fig)


def plot_timeline(timeline: dict, out: str | os.PathLike, top: int = 5):
    """Probabilities of the ``top`` classes (by peak probability) along the video."""
    import torch

    plt = _pyplot()
    entries = timeline["entries"]
    probs = torch.tensor([e["probs"] for e in entries])  # windows x classes
    centres = [(e["start"] + e["end"]) / 2 for e in entries]
    best = probs.max(0).values.topk(min(top, probs.shape[1])).indices.tolist()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for c in best:
        ax.plot(centres, probs[:, c].tolist(), marker="o", ms=3, label=timeline["classes"][c])
    ax.set_xlim(0, timeline["duration"])
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_title(f"{Path(timeline['path']).name}: {timeline['window']:g} s windows every {timeline['stride']:g} s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    _save(fig, out)
    plt.close(fig)


def _overlays(frames, maps):
    """uint8 ``t c H W`` frames and ``t h w`` maps -> list of ``H W 3`` uint8 heat-map overlays."""
    import torch
    import torch.nn.functional as F

    plt = _pyplot()
    t, _, H, W = frames.shape
    up = F.interpolate(maps[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    up = up / up.amax((1, 2), keepdim=True).clamp(min=1e-12)
    heat = torch.from_numpy(plt.get_cmap("jet")(up.numpy())[..., :3]).float()  # t H W 3
    base = frames.permute(0, 2, 3, 1).float() / 255
    return [((0.55 * base[i] + 0.45 * heat[i]).clamp(0, 1) * 255).round().to(torch.uint8).numpy() for i in range(t)]


def plot_explanation(frames, maps, importance, out_png: str | os.PathLike, out_gif: str | os.PathLike, title: str = ""):
    """A PNG grid (frames, attention overlays, per-frame importance bars) and an animated GIF of the overlays
    (one GIF frame per input frame)."""
    from PIL import Image

    plt = _pyplot()
    overlays = _overlays(frames, maps)
    t = len(overlays)
    fig = plt.figure(figsize=(1.5 * t, 4.6))
    grid = fig.add_gridspec(3, t, height_ratios=[1, 1, 0.8])
    for i in range(t):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(frames[i].permute(1, 2, 0).numpy())
        ax.set_title(f"frame {i}", fontsize=7)
        ax.axis("off")
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(overlays[i])
        ax.axis("off")
    ax = fig.add_subplot(grid[2, :])
    ax.bar(range(t), [float(v) for v in importance], color="tab:orange")
    ax.set_xticks(range(t))
    ax.set_ylabel("frame importance", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, out_png)
    plt.close(fig)
    out_gif = Path(out_gif)
    tmp = out_gif.with_name(f".{out_gif.stem}.tmp.gif")
    images = [Image.fromarray(o) for o in overlays]
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=250, loop=0, disposal=2)
    os.replace(tmp, out_gif)
