"""Using a trained model: predictions (multi-view, timelines), features, explanations, export."""

from .predict import Predictor, expand_inputs, parse_views

__all__ = ["Predictor", "expand_inputs", "parse_views"]
