"""Running the service: ``run_server`` serves ``create_app``'s app with uvicorn until SIGTERM or SIGINT, then drains
(what ``timesformer serve`` runs).

Connections are bounded in time, not in count. uvicorn closes idle keep-alive connections (``timeout_keep_alive``)
but gives a request's head no deadline, so :class:`HeadTimeoutProtocol` adds one. uvicorn's ``limit_concurrency`` is
not used: it counts open connections, so a hundred that send half a head would turn every request, ``/healthz``
included, into 503; the guard's upload slots bound the costly requests instead.
"""

from __future__ import annotations

import functools

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..inference import Predictor
from .app import create_app


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's head: it must be complete within ``head_timeout``
    seconds of the connection opening or of the last response, else the connection closes (nginx's
    ``client_header_timeout``). Idle keep-alive connections still close sooner, after ``timeout_keep_alive``; a head
    is at most 16 KiB (h11's limit)."""

    def __init__(self, *args, head_timeout: float = 10.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout, self._head_due = head_timeout, None

    def connection_made(self, transport):
        super().connection_made(transport)
        self._await_head()

    def on_response_complete(self):
        self._await_head()  # first: the parent may start a pipelined request at once
        super().on_response_complete()

    def connection_lost(self, exc):
        if self._head_due is not None:
            self._head_due.cancel()
        super().connection_lost(exc)

    def _await_head(self):
        if self._head_due is not None:
            self._head_due.cancel()
        self._head_due = self.loop.call_later(self.head_timeout, self._head_late)

    def _head_late(self):
        if self.cycle is None or self.cycle.response_complete:  # no request under way: its head never came
            self.timeout_keep_alive_handler()


class DrainingServer(uvicorn.Server):
    """SIGTERM / SIGINT: stop accepting, answer the requests already in, then exit 0 (uvicorn would re-raise the
    signal after the drain, and the process would die of it)."""

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        getattr(self, "_captured_signals", []).clear()


def server_config(
    app, *, host: str = "127.0.0.1", port: int = 8000, head_timeout: float = 10.0, keep_alive: float = 5.0, **options
) -> uvicorn.Config:
    """uvicorn's config for ``app``: the h11 protocol with a deadline for each head (``head_timeout`` s), idle
    keep-alive connections closed after ``keep_alive`` s, 30 s to drain on a signal; ``options``: more of
    ``uvicorn.Config``'s (``log_level``, ...)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=functools.partial(HeadTimeoutProtocol, head_timeout=head_timeout),
        timeout_keep_alive=keep_alive,
        timeout_graceful_shutdown=30,
        **{"log_level": "info", **options},
    )


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
    request_timeout: float = 60.0,
    head_timeout: float = 10.0,
    docs: bool = False,
) -> None:
    """Serve ``predictor`` over HTTP on ``host:port`` until a signal ends it (see ``create_app`` for the rest, and
    ``server_config``); up to 30 s for the requests in flight when it comes."""
    app = create_app(
        predictor,
        model=model,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        max_upload_mb=max_upload_mb,
        api_key=api_key,
        request_timeout=request_timeout,
        docs=docs,
    )
    DrainingServer(server_config(app, host=host, port=port, head_timeout=head_timeout)).run()
