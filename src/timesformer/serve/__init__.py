"""Serving a trained model: an HTTP API with request batching (``create_app``)."""

from .app import create_app
from .batching import Batcher, QueueFull

__all__ = ["Batcher", "QueueFull", "create_app"]
