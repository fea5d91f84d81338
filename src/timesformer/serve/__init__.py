"""Serving a trained model: an HTTP API with request batching (``create_app``), run with uvicorn (``run_server``)."""

from .app import create_app
from .batching import Batcher, QueueFull
from .server import run_server

__all__ = ["Batcher", "QueueFull", "create_app", "run_server"]
