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
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, out)
    plt.close(fig)
