"""Figures (matplotlib, imported lazily): loss curves, confusion matrices, scheme comparisons, previews."""

from .plots import plot_confusion, plot_explanation, plot_loss_curves, plot_schemes, plot_timeline, plot_transfer
from .preview import preview_synthetic, write_preview

__all__ = [
    "plot_confusion",
    "plot_explanation",
    "plot_loss_curves",
    "plot_schemes",
    "plot_timeline",
    "plot_transfer",
    "preview_synthetic",
    "write_preview",
]
