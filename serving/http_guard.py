"""HTTP guards in front of BentoML: what a request may be before the framework parses it (JSON
only, a size cap, a cap on requests in flight) and quiet client-error logs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]

JSON_TYPES = {"application/json", ""}
# After a 413 the rest of the body is read and discarded, up to these bounds, before the
# connection closes (nginx's lingering close): a client that writes its whole body before reading
# (urllib, requests) then reads the 413 instead of a connection reset. Beyond them it closes.
DRAIN_BYTES = 64 << 20
DRAIN_S = 5.0


async def json_error(
    send: Callable[[Any], Awaitable[None]],
    status: int,
    message: str,
    detail: dict[str, Any],
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """A JSON error answered straight from ASGI: ``{"error": message, "detail": [detail]}``."""
    body = json.dumps({"error": message, "detail": [detail]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class JsonOnly:
    """Only ``application/json`` (or no Content-Type) on POSTs to the given paths."""

    def __init__(self, app: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = set(paths)

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            ctype = next(
                (v for k, v in scope.get("headers") or () if k == b"content-type"), b""
            ).decode("latin-1")
            media = ctype.split(";")[0].strip().lower()
            if media not in JSON_TYPES:
                await json_error(
                    send,
                    415,
                    f"Content-Type {media!r} is not supported; send application/json",
                    {"loc": ["header", "content-type"], "type": "unsupported_media_type"},
                )
                return
        await self.app(scope, receive, send)


class Limits:
    """Per-worker limits answered before BentoML reads a request: a body over ``max_body``
    bytes gets a 413 naming the limit (by Content-Length, or counted when chunked); beyond
    ``max_in_flight`` concurrent requests a 503 with Retry-After. Every 503 that leaves the
    service (BentoML's batching deadline included) carries Retry-After. Probes and /metrics
    pass untouched."""

    OPEN = frozenset({"/metrics", "/healthz", "/livez", "/readyz", "/health"})

    def __init__(
        self, app: ASGIApp, max_body: int, max_in_flight: int, retry_after_s: int = 1
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.retry_after = (b"retry-after", str(retry_after_s).encode())

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.OPEN:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            await json_error(
                send,
                503,
                f"overloaded: {self.max_in_flight} requests in flight in this worker; retry",
                {"loc": ["request"], "type": "overloaded", "max_in_flight": self.max_in_flight},
                (self.retry_after,),
            )
            return
        header = next((v for k, v in scope.get("headers") or () if k == b"content-length"), b"")
        length = int(header) if header.isdigit() else None
        too_large = length is not None and length > self.max_body
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body, receive = await read_body(receive, self.max_body)  # chunked: counted
            too_large = body is None
        if too_large:
            await self.too_large(receive, send, length)
            return

        async def send_retry_after(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers") or ())
                if not any(k.lower() == b"retry-after" for k, _ in headers):
                    message = {**message, "headers": [*headers, self.retry_after]}
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, receive, send_retry_after)
        finally:
            self.in_flight -= 1

    async def too_large(self, receive, send, length: int | None) -> None:
        """413 naming the limit, on the wire at once (a client that reads early has it), then
        the rest of the body discarded up to DRAIN_BYTES / DRAIN_S so that a client still
        writing can read it too; then the connection closes."""
        body = json.dumps(
            {
                "error": f"request body over {self.max_body:,} bytes; "
                "send fewer transactions a request",
                "detail": [{"loc": ["body"], "type": "too_large", "max_bytes": self.max_body}],
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        if length is None or length <= self.max_body + DRAIN_BYTES:  # else: cut at the bound
            await drain(receive, DRAIN_BYTES, DRAIN_S)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def drain(receive: Callable[[], Awaitable[Any]], max_bytes: int, max_s: float) -> int:
    """Read and discard request body messages until the body ends, ``max_bytes`` are read or
    ``max_s`` seconds pass; the bytes read."""
    read = 0
    try:
        async with asyncio.timeout(max_s):
            while read <= max_bytes:
                message = await receive()
                if message["type"] != "http.request":
                    break
                read += len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        pass
    return read


async def read_body(
    receive: Callable[[], Awaitable[Any]], max_bytes: int | None = None
) -> tuple[bytes | None, Callable[[], Awaitable[Any]]]:
    """Read a request body and return it with a ``receive`` that replays it; the body is None
    when it grows over ``max_bytes`` (and b"" on a disconnect, which the app then sees)."""
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return b"", receive
        chunk = message.get("body", b"")
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            return None, receive
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    replay = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_again() -> Any:
        return replay.pop() if replay else await receive()

    return body, receive_again


class ClientErrorLogFilter(logging.Filter):
    """Turn BentoML's ERROR-with-traceback for a client error (a 4xx: validation failed, bad
    argument) or a 503 (the state store unavailable) into a one-line WARNING, so bad traffic or
    an outage cannot flood the log with tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _is_client_error(exc):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = f"{record.getMessage()}: client error {type(exc).__name__}: {_brief(exc)}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def _brief(exc: BaseException) -> str:
    """The offending fields of a validation error, or the first line of the message."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        items = errors(include_input=False)[:3]
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in items)
    return str(exc).splitlines()[0] if str(exc) else ""


def _is_client_error(exc: BaseException) -> bool:
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    code = int(getattr(getattr(exc, "error_code", None), "value", 500))
    return isinstance(exc, BentoMLException) and (400 <= code < 500 or code == 503)


def quiet_client_errors() -> None:
    """Install :class:`ClientErrorLogFilter` on BentoML's HTTP error logger."""
    logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLogFilter())


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
