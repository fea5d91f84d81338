"""Running the service: ``run_server`` serves ``create_app``'s app with uvicorn until SIGTERM or SIGINT, then drains
(what ``timesformer serve`` runs)."""

from __future__ import annotations

import uvicorn

from ..inference import Predictor
from .app import create_app


class DrainingServer(uvicorn.Server):
    """SIGTERM / SIGINT: stop accepting, answer the requests already in, then exit 0 (uvicorn would re-raise the
    signal after the drain, and the process would die of it)."""

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        getattr(self, "_captured_signals", []).clear()


def run_server(
    predictor: Predictor,
    *,
    model=None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 8,
    max_wait_ms: float = 20.0,
    queue_size: int = 64,
    max_upload_mb: float = 200.0,
    api_key: str | None = None,
) -> None:
    """Serve ``predictor`` over HTTP on ``host:port`` until a signal ends it (see ``create_app`` for the rest); up
    to 30 s for the requests in flight when it comes."""
    app = create_app(
        predictor,
        model=model,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        max_upload_mb=max_upload_mb,
        api_key=api_key,
    )
    # connections past what the queue and the decoding threads can hold get 503 before their upload is read
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=30,
        limit_concurrency=queue_size + 2 * max_batch + 8,
    )
    DrainingServer(config).run()
