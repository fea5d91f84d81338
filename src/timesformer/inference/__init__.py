"""Using a trained model: predictions (multi-view, timelines), features, explanations, export."""

from .predict import Predictor, expand_inputs

__all__ = ["Predictor", "expand_inputs"]
