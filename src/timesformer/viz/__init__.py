"""Figures (matplotlib, imported lazily): loss curves, confusion matrices, scheme comparisons, previews."""

from .plots import plot_confusion, plot_explanation, plot_loss_curves, plot_schemes, plot_timeline
from .preview import write_preview

__all__ = ["plot_confusion", "plot_explanation", "plot_loss_curves", "plot_schemes", "plot_timeline", "write_preview"]
