"""Durable before the answer, without holding up the next batch.

The adaptive batcher keeps one batch in flight. Had a batch waited for its journal fsync, the
worker would score nothing while the disk syncs. So a batch only appends its lines (page cache,
microseconds) and returns; this ASGI middleware holds each successful ``/predict`` answer until
everything written before it is fsync'd (group commit: one fsync covers many batches), while the
next batch scores. A journal that cannot be made durable turns the held answer into a 503 with
``Retry-After``: nothing is answered that is not on disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from serving import telemetry as tm
from serving.http_guard import json_error

_JOURNAL: Any = None  # this worker's serving.journal.Journal, when the decision log is on


def install(journal: Any) -> None:
    """The journal answers wait for (None: the decision log is off, nothing waits)."""
    global _JOURNAL
    _JOURNAL = journal


class DurableAnswers:
    """Pure ASGI middleware: a 2xx answer on ``paths`` leaves once the journal's lines written
    before it are fsync'd."""

    def __init__(self, app: Any, paths: Iterable[str] = ("/predict",)) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        journal = _JOURNAL
        if journal is None or scope["type"] != "http" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        failed = False

        async def held(message: dict[str, Any]) -> None:
            nonlocal failed
            if failed:
                return  # the answer became a 503: the rest of it is dropped
            if message["type"] == "http.response.start" and message["status"] < 300:
                try:
                    await journal.durable(journal.written)
                except OSError as exc:
                    failed = True
                    tm.LOG_FAILURES.inc()
                    await json_error(
                        send, 503, f"the decision journal is not writable ({exc}); retry",
                        {"loc": ["decision_log"], "msg": str(exc), "type": "journal"},
                        ((b"retry-after", b"1"),),
                    )  # fmt: skip
                    return
            await send(message)

        await self.app(scope, receive, held)
