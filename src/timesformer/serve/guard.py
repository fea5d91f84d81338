"""What every HTTP request passes before the routes (an ASGI middleware): the API key, the metrics, and the bounds on
what one request may cost in seconds, bytes and upload slots.

- *The key.* Every path but ``OPEN_PATHS`` needs ``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` (the scheme in
  any case, as RFC 7235 says), compared in constant time; anything else is 401.
- *A deadline.* Each request has ``request_timeout`` seconds from its head's arrival (``request.state.deadline``,
  ``time.monotonic()`` s). Every decode it starts is handed the deadline and stops there; past it the request is
  cancelled where it waits (a decode not yet started, the batcher's queue, its body) and answered 503 with
  ``Retry-After``.
- *Upload slots.* At most ``upload_slots`` requests to ``UPLOAD_PATHS`` at once. A request takes its slot when the
  first bytes of its body arrive (a head alone holds a connection, not a slot), and gives it back once it is
  answered *and* every thread working for it is done (``request.state.jobs``, a :class:`~.state.Jobs`): a request
  cancelled at its deadline keeps its slot while its decode still runs, so its client cannot start the next one
  meanwhile. With every slot taken it is 503, before the body is read (or after its first bytes, if the last slot
  went while they came). The other paths never wait for slots: ``/healthz`` answers while every slot is taken.
- *The body as it arrives.* Its first bytes must come within ``body_start`` seconds of the head. Its bytes are
  counted: past ``max_upload_bytes`` it is a 413 at once, with or without a ``Content-Length``. It must keep up
  ``min_upload_rate`` bytes/s once ``upload_grace`` seconds of waiting are spent (each byte buys
  ``1 / min_upload_rate`` s more, as Apache's mod_reqtimeout ``body=...,MinRate=...``), else 408.

A refusal the guard answers itself closes the connection (``Connection: close``): the rest of the body is never
read. The app is told the client left, and whatever it answers after that goes nowhere.
"""

from __future__ import annotations

import asyncio
import hmac
import time

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from .errors import out_of_time
from .state import Jobs, ServerState, Settings

OPEN_PATHS = {"/healthz", "/"}  # the page holds no data; it sends the key it is given with each call
UPLOAD_PATHS = {"/v1/predict", "/v1/explain"}
DISCONNECT = {"type": "http.disconnect"}


def authorized(headers: Headers, key: str) -> bool:
    """``X-API-Key: key`` or ``Authorization: Bearer key`` (any case of ``Bearer``); a bare key is not a scheme."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    given = [headers.get("x-api-key"), token.strip() if scheme.lower() == "bearer" else None]
    return any(g and hmac.compare_digest(g.encode(), key.encode()) for g in given)


class Guard:
    """The ASGI middleware the module docstring describes, around the app's routes."""

    def __init__(self, app, *, state: ServerState, known_paths: set[str]):
        self.app, self.state, self.known_paths = app, state, known_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings, start = self.state.settings, time.perf_counter()
        path = scope["path"] if scope["path"] in self.known_paths else "other"  # metrics labels stay few and safe
        call = _Call(scope, receive, send, settings)
        scope.setdefault("state", {}).update(deadline=call.deadline, jobs=call.jobs)
        try:
            await self._serve(call, settings)
        finally:
            seconds = (call.answered or time.perf_counter()) - start  # to the answer, not to the threads' end
            self.state.metrics.request(path, call.status or 500, seconds)

    async def _serve(self, call: _Call, settings: Settings):
        path, state = call.scope["path"], self.state
        if settings.api_key is not None and path not in OPEN_PATHS and not authorized(call.headers, settings.api_key):
            return await call.refuse(401, "a valid API key is required (X-API-Key or Authorization: Bearer)")
        if path not in UPLOAD_PATHS:
            return await self._run(call, settings)
        busy = f"the server is busy: all {settings.upload_slots} upload slots are taken; retry shortly"
        if state.uploads >= settings.upload_slots:
            return await call.refuse(503, busy, {"Retry-After": "1"})
        length = call.headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.max_upload_bytes:
            return await call.refuse(413, call.too_large(f"{int(length) / 2**20:.1f} MiB"))
        call.metered = True
        await call.start_body()
        if call.refused:  # its body did not start in time (408), or its first bytes were too many (413)
            return
        if state.uploads >= settings.upload_slots:  # the last slot went while its first bytes came
            return await call.refuse(503, busy, {"Retry-After": "1"})
        state.uploads += 1
        try:
            await self._run(call, settings)
        finally:
            try:
                await call.jobs.finished()  # the slot is held until no thread works for this request any more
            finally:
                state.uploads -= 1

    async def _run(self, call: _Call, settings: Settings):
        deadline = asyncio.timeout(call.deadline - time.monotonic())
        try:
            async with deadline:
                await self.app(call.scope, call.receive, call.send)
        except TimeoutError:
            if not deadline.expired() or call.started:  # not ours, or too late to answer: uvicorn closes
                raise
            late = out_of_time(settings.request_timeout)
            await call.refuse(late.status, late.message, late.headers)


class _Call:
    """One request through the guard: the app's receive and send, wrapped, and the refusal the guard may answer."""

    def __init__(self, scope, receive, send, settings: Settings):
        self.scope, self._receive, self._send, self.settings = scope, receive, send, settings
        self.headers = Headers(scope=scope)
        self.deadline = time.monotonic() + settings.request_timeout
        self.jobs = Jobs()
        self.metered = False  # an upload: its body counted and timed
        self.status, self.started, self.refused = None, False, False
        self.answered = None  # time.perf_counter() when the answer's last byte went out
        self.received, self.waited = 0, 0.0  # body bytes, and seconds spent waiting for them
        self._first = None  # the body's first message, read by the guard before the app asks for it

    def too_large(self, size: str) -> str:
        return f"the upload ({size}) is over the {self.settings.max_upload_mb:g} MiB limit"

    async def send(self, message):
        if self.refused:  # the guard has answered: the app's late answer goes nowhere
            return
        if message["type"] == "http.response.start":
            self.status, self.started = message["status"], True
        await self._send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.answered = time.perf_counter()

    async def start_body(self):
        """Wait for the body's first message (the app gets it first when it asks): 408 if it does not come within
        ``body_start`` seconds of the head."""
        self._first = await self.receive()

    async def receive(self):
        if self.refused:
            return DISCONNECT
        if self._first is not None:
            message, self._first = self._first, None
            return message
        if not self.metered or self.started:
            return await self._receive()
        settings = self.settings
        if self.received == 0:  # nothing of the body yet: a head alone does not get the upload's grace
            allowed = min(settings.body_start, settings.upload_grace) - self.waited
        else:
            allowed = settings.upload_grace + self.received / settings.min_upload_rate - self.waited
        begun = time.monotonic()
        try:
            async with asyncio.timeout(max(allowed, 0.0)):
                message = await self._receive()
        except TimeoutError:
            waited = self.waited + time.monotonic() - begun
            if self.received == 0:
                await self.refuse(408, f"the upload's body did not start within {waited:.1f} s of its head")
            else:
                await self.refuse(
                    408,
                    f"the upload came too slowly: {self.received / 1024:.1f} KiB in {waited:.1f} s; after the first "
                    f"{settings.upload_grace:g} s it needs {settings.min_upload_rate / 1024:g} KiB/s",
                )
            return DISCONNECT
        self.waited += time.monotonic() - begun
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > settings.max_upload_bytes:
                await self.refuse(413, self.too_large(f"{self.received / 2**20:.1f} MiB and more"))
                return DISCONNECT
        return message

    async def refuse(self, status: int, message: str, headers: dict | None = None):
        """Answer ``status`` with ``{"error": message}`` and close the connection (its body is left unread)."""
        response = JSONResponse({"error": message}, status, headers={**(headers or {}), "Connection": "close"})
        await response(self.scope, self._receive, self.send)
        self.refused = True
