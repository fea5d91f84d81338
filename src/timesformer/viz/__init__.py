"""Figures (matplotlib, imported lazily): loss curves, confusion matrices."""
from .plots import plot_confusion, plot_loss_curves

__all__ = ["plot_confusion", "plot_loss_curves"]
