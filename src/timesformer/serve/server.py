"""Running the service: ``run_server`` serves ``create_app``'s app with uvicorn until SIGTERM or SIGINT, then drains
(what ``timesformer serve`` runs).

Connections are bounded in time, not in count. uvicorn closes idle keep-alive connections (``timeout_keep_alive``)
but gives a request's head no deadline, so :class:`BoundedProtocol` adds one. uvicorn's ``limit_concurrency`` is not
used: it counts open connections, so a hundred that send half a head would turn every request, ``/healthz``
included, into 503; the guard's upload slots bound the costly requests instead.

The event loop parses each request's framing (h11, in Python), and a chunked body's cost is per chunk, not per byte:
about 40 us a chunk, so a body of one-byte chunks costs 7 us a byte, and one 64 KiB read of them stalls the loop for
half a second. :class:`BoundedProtocol` refuses such a body (400, connection closed) after a burst of small chunks,
before it has cost the loop more than a few milliseconds.
"""

from __future__ import annotations

import functools
import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..inference import Predictor
from .app import create_app


class ChunkMeter(h11.Connection):
    """h11's server side, with a budget for body events (one per chunk of a chunked body, one per read otherwise).

    Each read of ``n`` bytes earns ``1 + n / min_chunk`` events, up to ``burst`` saved; each body event spends one.
    A body whose chunks average ``min_chunk`` bytes or more, or arrive one read at a time, never runs out; one of
    tiny chunks does after at most ``burst`` plus one read's worth of them. Out of budget, ``refused`` is set and
    no more events are parsed (``next_event`` answers ``PAUSED``, which stops uvicorn's loop over them).
    """

    def __init__(self, *args, min_chunk: int = 1024, burst: int = 256, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_chunk, self.burst = min_chunk, burst
        self.budget, self.refused = float(burst), False

    def receive_data(self, data: bytes) -> None:
        self.budget = min(self.budget + 1 + len(data) / self.min_chunk, self.burst)
        super().receive_data(data)

    def next_event(self):
        if self.refused:
            return h11.PAUSED
        event = super().next_event()
        if type(event) is h11.Data:
            self.budget -= 1
            self.refused = self.budget < 0
        return event


class BoundedProtocol(H11Protocol):
    """uvicorn's h11 protocol with two bounds it lacks.

    - A deadline for each request's head: it must be complete within ``head_timeout`` seconds of the connection
      opening or of the last response, else the connection closes (nginx's ``client_header_timeout``). Idle
      keep-alive connections still close sooner, after ``timeout_keep_alive``; a head is at most 16 KiB (h11's
      limit).
    - A body's framing may cost the event loop little: one whose chunks average under ``min_chunk`` bytes is
      answered 400 and the connection closed once a ``burst`` of them is spent (:class:`ChunkMeter`). Clients send
      far larger chunks (httpx and curl: 16-64 KiB), and a body with a ``Content-Length`` has no chunks at all.
    """

    def __init__(self, *args, head_timeout: float = 10.0, min_chunk: int = 1024, burst: int = 256, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout, self._head_due = head_timeout, None
        size = self.config.h11_max_incomplete_event_size  # as the parent's connection: None is h11's default
        limit = {} if size is None else {"max_incomplete_event_size": size}
        self.conn = ChunkMeter(h11.SERVER, min_chunk=min_chunk, burst=burst, **limit)

    def connection_made(self, transport):
        super().connection_made(transport)
        self._await_head()

    def handle_events(self):
        super().handle_events()
        if self.conn.refused and not self.transport.is_closing():
            self._refuse_chunks()

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

    def _refuse_chunks(self):
        """400 (unless the app has begun its answer) and close: the app is told the client left."""
        if self.cycle is None or not self.cycle.response_started:
            min_chunk = self.conn.min_chunk
            error = f"the chunked body's chunks are too small: they must average {min_chunk} bytes or more"
            body = json.dumps({"error": error}).encode()
            head = (
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
        self.transport.close()


class DrainingServer(uvicorn.Server):
    """SIGTERM / SIGINT: stop accepting, answer the requests already in, then exit 0 (uvicorn would re-raise the
    signal after the drain, and the process would die of it)."""

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        getattr(self, "_captured_signals", []).clear()


def server_config(
    app, *, host: str = "127.0.0.1", port: int = 8000, head_timeout: float = 10.0, keep_alive: float = 5.0, **options
) -> uvicorn.Config:
    """uvicorn's config for ``app``: the h11 protocol with a deadline for each head (``head_timeout`` s) and a bound
    on a chunked body's framing (:class:`BoundedProtocol`), idle keep-alive connections closed after ``keep_alive``
    s, 30 s to drain on a signal; ``options``: more of ``uvicorn.Config``'s (``log_level``, ...)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=functools.partial(BoundedProtocol, head_timeout=head_timeout),
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
