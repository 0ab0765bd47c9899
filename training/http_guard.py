"""ASGI middleware: reject request bodies the API does not accept, before the framework parses.

BentoML answers a ``multipart/form-data`` header without a boundary with a 500; our JSON APIs
answer any non-JSON body with a 415 that names the header instead.
"""

from __future__ import annotations

import json
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
            headers = dict(scope.get("headers") or [])
            ctype = headers.get(b"content-type", b"").decode("latin-1")
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
