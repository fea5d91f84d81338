"""Running the service: ``run_server`` serves ``create_app``'s app with uvicorn until SIGTERM or SIGINT, then drains
(what ``timesformer serve`` runs).

Connections are bounded in time, not in count. uvicorn closes idle keep-alive connections (``timeout_keep_alive``)
but gives a request's head no deadline, so :class:`BoundedProtocol` adds one. uvicorn's ``limit_concurrency`` is not
used: it counts open connections, so a hundred that send half a head would turn every request, ``/healthz``
included, into 503; the guard's upload slots bound the costly requests instead.

The event loop reads and parses each request's framing (h11, in Python), and some of that cost is per read and per
chunk, not per byte: about 130 us a read (the body's bytes through h11, uvicorn and the app's ``receive``), so a
body sent as 5,000 one-byte TCP segments cost the loop 0.65 s; and about 40 us a chunk of a chunked body, so one
64 KiB read of one-byte chunks stalls the loop for half a second. :class:`BoundedProtocol` meters both: a connection
whose reads are small and many is paused for a few milliseconds (the kernel gathers what it sends meanwhile into
one larger read), and a chunked body of tiny chunks is refused (400, connection closed) after a burst of them.
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
    """h11's server side, with a budget for a chunked body's chunks (other bodies are not charged).

    Each request starts with ``burst`` saved; each read of ``n`` bytes earns ``1 + n / min_chunk`` chunks on top of
    at most ``burst`` saved (a 256 KiB read of 512-byte chunks holds more than a burst); each chunk of a chunked
    body spends one. A body whose chunks average ``min_chunk`` bytes or more on the wire (framing included), or
    arrive one read at a time, never runs out; one of tiny chunks does after at most ``burst`` plus one read's worth
    of them. Out of budget, ``refused`` is set and no more events are parsed
    (``next_event`` answers ``PAUSED``, which stops uvicorn's loop over them).
    """

    def __init__(self, *args, min_chunk: int = 128, burst: int = 256, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_chunk, self.burst = min_chunk, burst
        self.budget, self.refused, self.chunked = float(burst), False, False

    def receive_data(self, data: bytes) -> None:
        self.budget = min(self.budget, self.burst) + 1 + len(data) / self.min_chunk  # the read's own in full
        super().receive_data(data)

    def next_event(self):
        if self.refused:
            return h11.PAUSED
        event = super().next_event()
        kind = type(event)
        if kind is h11.Request:  # a new request: a new budget, charged only if its body is chunked
            self.budget = float(self.burst)
            self.chunked = any(
                name == b"transfer-encoding" and b"chunked" in value.lower() for name, value in event.headers
            )
        elif kind is h11.Data and self.chunked:
            self.budget -= 1
            self.refused = self.budget < 0
        return event


class ReadPauses:
    """The transport as uvicorn sees it: its ``pause_reading`` and ``resume_reading`` (uvicorn's flow control) and
    the read meter's (``throttle`` / ``unthrottle``) are two reasons to pause, and reading resumes only once neither
    holds. Everything else is the transport's own."""

    def __init__(self, transport):
        self._transport = transport
        self.paused = self.throttled = False  # uvicorn's reason; the read meter's

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def pause_reading(self):
        self.paused = True
        self._transport.pause_reading()

    def resume_reading(self):
        self.paused = False
        if not self.throttled:
            self._transport.resume_reading()

    def throttle(self):
        self.throttled = True
        self._transport.pause_reading()

    def unthrottle(self):
        self.throttled = False
        if not self.paused and not self._transport.is_closing():
            self._transport.resume_reading()


class BoundedProtocol(H11Protocol):
    """uvicorn's h11 protocol with the bounds it lacks.

    - A deadline for each request's head: it must be complete within ``head_timeout`` seconds of the connection
      opening or of the last response, else the connection closes (nginx's ``client_header_timeout``). Idle
      keep-alive connections still close sooner, after ``timeout_keep_alive``; a head is at most 16 KiB (h11's
      limit).
    - Reads cost the event loop little: each read spends one of ``read_burst`` tokens, which come back at
      ``read_rate`` a second, one a ``min_read`` bytes read, and one a response. A connection out of tokens after a
      read under ``min_read`` bytes is not read from until it has one again (a few milliseconds: the kernel gathers
      what comes meanwhile into one read). Larger reads are never paused, and a client that sends whole requests
      and waits for the answers never runs out.
    - A chunked body's framing may cost the event loop little: one whose chunks average under ``min_chunk`` bytes is
      answered 400 and the connection closed once a ``burst`` of them is spent (:class:`ChunkMeter`). Clients send
      far larger chunks (httpx and curl: 16-64 KiB; a generator's chunks of 256 bytes pass), and a body with a
      ``Content-Length`` has no chunks at all.
    """

    def __init__(
        self,
        *args,
        head_timeout: float = 10.0,
        min_chunk: int = 128,
        burst: int = 256,
        min_read: int = 1024,
        read_rate: float = 100.0,
        read_burst: int = 64,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.head_timeout, self._head_due = head_timeout, None
        size = self.config.h11_max_incomplete_event_size  # as the parent's connection: None is h11's default
        limit = {} if size is None else {"max_incomplete_event_size": size}
        self.conn = ChunkMeter(h11.SERVER, min_chunk=min_chunk, burst=burst, **limit)
        self.min_read, self.read_rate, self.read_burst = min_read, read_rate, read_burst
        self.reads, self._reads_at, self._unthrottle = float(read_burst), None, None

    def connection_made(self, transport):
        super().connection_made(ReadPauses(transport))
        self._reads_at = self.loop.time()
        self._await_head()

    def data_received(self, data: bytes) -> None:
        self._meter_read(len(data))
        super().data_received(data)

    def handle_events(self):
        super().handle_events()
        if self.conn.refused and not self.transport.is_closing():
            self._refuse_chunks()

    def on_response_complete(self):
        self.reads = min(self.reads + 1, self.read_burst)  # the request's head: a client that waits is not charged
        self._await_head()  # first: the parent may start a pipelined request at once
        super().on_response_complete()

    def connection_lost(self, exc):
        for timer in (self._head_due, self._unthrottle):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def _meter_read(self, size: int):
        """Spend a token on a read of ``size`` bytes; out of tokens after a small one, pause reading until one is
        back."""
        now = self.loop.time()
        earned = (now - self._reads_at) * self.read_rate + size / self.min_read
        self.reads, self._reads_at = min(self.reads + earned, self.read_burst) - 1, now
        if self.reads < 0 and size < self.min_read and self._unthrottle is None:
            self.transport.throttle()
            self._unthrottle = self.loop.call_later(-self.reads / self.read_rate, self._resume_reads)

    def _resume_reads(self):
        self._unthrottle = None
        self.transport.unthrottle()

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
            error = (
                "the chunked body's chunks are too small: they must average "
                f"{self.conn.min_chunk} bytes or more, framing included"
            )
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
    on what reads and a chunked body's framing cost the loop (:class:`BoundedProtocol`), idle keep-alive connections
    closed after ``keep_alive`` s, 30 s to drain on a signal; ``options``: more of ``uvicorn.Config``'s
    (``log_level``, ...)."""
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
