"""ASGI middleware: reject request bodies the API does not accept, before the framework parses.

BentoML answers a ``multipart/form-data`` header without a boundary with a 500; our JSON APIs
answer any non-JSON body with a 415 that names the header instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]

JSON_TYPES = {"application/json", ""}


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
                body = json.dumps(
                    {
                        "error": f"Content-Type {media!r} is not supported; send application/json",
                        "detail": [
                            {"loc": ["header", "content-type"], "type": "unsupported_media_type"}
                        ],
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 415,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class ClientErrorLogFilter(logging.Filter):
    """Turn BentoML's ERROR-with-traceback for a client error (a 4xx: validation failed, bad
    argument) into a one-line WARNING, so bad traffic cannot flood the log with tracebacks."""

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
    code = getattr(getattr(exc, "error_code", None), "value", 500)
    return isinstance(exc, BentoMLException) and 400 <= int(code) < 500


def quiet_client_errors() -> None:
    """Install :class:`ClientErrorLogFilter` on BentoML's HTTP error logger."""
    logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLogFilter())


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def admin_allowed(token: str | None, authorization: str | None, client_host: str | None) -> int:
    """HTTP status for an admin call: 200 when allowed, 401 without the right bearer token
    (when a token is configured), 403 from a non-loopback client (when none is)."""
    import hmac

    if token:
        given = (authorization or "").removeprefix("Bearer ").strip()
        return 200 if hmac.compare_digest(given.encode(), token.encode()) else 401
    return 200 if client_host in LOOPBACK else 403
