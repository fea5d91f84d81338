"""Figures (matplotlib, imported lazily): loss curves, confusion matrices."""
from .plots import plot_confusion, plot_explanation, plot_loss_curves, plot_timeline

__all__ = ["plot_confusion", "plot_explanation", "plot_loss_curves", "plot_timeline"]
