"""Requests the server refuses: ``BadRequest`` becomes the JSON ``{"error": ...}`` the client gets (a 4xx naming the
problem, or 503 with ``Retry-After``), and no error text names a server-side path."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse


class BadRequest(Exception):
    """Answer ``status`` with ``{"error": message}`` (and ``headers``, e.g. ``Retry-After``)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


async def bad_request_response(request: Request, err: BadRequest) -> JSONResponse:
    return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)


def hide_path(error, path: str) -> str:
    """An error's text without the server's temporary path (the client knows its upload as 'the upload')."""
    return str(error).replace(f"'{path}'", "the upload").replace(path, "the upload")


def out_of_time(seconds: float) -> BadRequest:
    """A request past its deadline (``request_timeout`` ``seconds``): 503 with ``Retry-After``."""
    return BadRequest(
        503,
        f"the request took longer than the server's {seconds:g} s limit; retry later, or with less to do",
        {"Retry-After": "5"},
    )
