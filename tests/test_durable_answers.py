"""An answer leaves only once its journal lines are fsync'd, and the batch does not wait for
it: serving.durable_answers on a real journal, through ASGI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from serving import durable_answers as da
from serving import journal as jn

from .test_decision_log import decision_line


def _app(journal: jn.Journal, status: int, seen: dict[str, Any]):
    """A stand-in for BentoML's app: the batch appends its lines (no wait) and answers."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["position"] = journal.write([decision_line("tx1")]) if status == 200 else 0
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"[]"})

    return app


def _call(app: Any, path: str = "/predict") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    asyncio.run(app({"type": "http", "path": path}, receive, send))
    return sent


@pytest.fixture
def journal(tmp_path: Path):
    j = jn.Journal(tmp_path, "w1")
    da.install(j)
    yield j
    da.install(None)
    j.close()


def test_the_answer_starts_only_once_its_lines_are_on_disk(journal: jn.Journal) -> None:
    seen: dict[str, Any] = {}
    synced_at_start: list[int] = []

    async def run() -> None:
        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                synced_at_start.append(journal.synced)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        app = da.DurableAnswers(_app(journal, 200, seen))
        await app({"type": "http", "path": "/predict"}, receive, send)

    asyncio.run(run())
    assert len(synced_at_start) == 1 and synced_at_start[0] >= seen["position"] > 0


def test_the_batch_is_not_held_by_the_fsync(
    journal: jn.Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the disk syncs, the app (the batcher) has already returned: the wait is the
    answer's, after the batch."""
    import threading

    gate = threading.Event()
    real = jn.os.fsync

    def slow(fd: int) -> None:
        gate.wait(5)
        real(fd)

    monkeypatch.setattr(jn.os, "fsync", slow)
    order: list[str] = []
    seen: dict[str, Any] = {}
    inner = _app(journal, 200, seen)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await inner(scope, receive, send)
        order.append("batch done")

    async def run() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            order.append(message["type"])
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        task = asyncio.create_task(
            da.DurableAnswers(app)({"type": "http", "path": "/predict"}, receive, send)
        )
        await asyncio.sleep(0.2)
        assert order == [], "the answer left before its fsync"
        assert seen["position"] > journal.synced  # written, not yet durable
        gate.set()
        await task
        return sent

    sent = asyncio.run(run())
    assert sent[0]["status"] == 200 and order[0] == "http.response.start"


def test_a_failing_disk_turns_the_answer_into_a_503(
    journal: jn.Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jn.os, "fsync", broken)
    sent = _call(da.DurableAnswers(_app(journal, 200, {})))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 503 and (b"retry-after", b"1") in sent[0]["headers"]
    body = json.loads(sent[1]["body"])
    assert "No space left" in body["error"] and body["detail"][0]["loc"] == ["decision_log"]


def test_errors_and_other_paths_pass_straight_through(
    journal: jn.Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 4xx on /predict and a 200 on another path never wait for the journal."""

    async def never(position: int) -> None:
        raise AssertionError("no wait for the journal expected")

    async def health(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    monkeypatch.setattr(journal, "durable", never)
    assert _call(da.DurableAnswers(_app(journal, 400, {})))[0]["status"] == 400
    assert _call(da.DurableAnswers(health), "/health")[0]["status"] == 200
    with pytest.raises(AssertionError, match="no wait"):  # and /predict's 200 does wait
        _call(da.DurableAnswers(health))
