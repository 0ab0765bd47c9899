"""A body over FRAUD_MAX_BODY_BYTES through `bentoml serve`: every common client reads the 413
and its JSON, those that write the whole body before reading included (the server discards the
rest of the body up to a bound before it closes); beyond the bound the connection closes, and
the server never reads without limit."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import aiohttp
import httpx
import pytest
import requests

from serving.http_guard import DRAIN_BYTES, DRAIN_S
from training.core.config import Settings

from .servers import AUTH

pytestmark = [pytest.mark.slow, pytest.mark.server]
CAP = Settings().max_body_bytes
SIZES = {"2MB": 2 << 20, "12MB": 12 << 20, "60MB": 60 << 20}


def body_of(size: int) -> bytes:
    return b'{"transactions": [' + b" " * (size - 21) + b"]}"


def with_urllib(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def with_requests(url: str, body: bytes) -> tuple[int, dict]:
    r = requests.post(
        url, data=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=60
    )
    return r.status_code, r.json()


def with_httpx(url: str, body: bytes) -> tuple[int, dict]:
    r = httpx.post(
        url, content=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=60
    )
    return r.status_code, r.json()


def with_aiohttp(url: str, body: bytes) -> tuple[int, dict]:
    async def go() -> tuple[int, dict]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers={**AUTH, "Content-Type": "application/json"}) as r,
        ):
            return r.status, await r.json()

    return asyncio.run(go())


CLIENTS = {"urllib": with_urllib, "requests": with_requests, "httpx": with_httpx,
           "aiohttp": with_aiohttp}  # fmt: skip


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("client", CLIENTS, ids=str)
def test_every_client_reads_the_413_and_its_json(service_url: str, client: str, size: str):
    status, answer = CLIENTS[client](f"{service_url}/predict", body_of(SIZES[size]))
    assert status == 413, answer
    assert answer["detail"][0] == {"loc": ["body"], "type": "too_large", "max_bytes": CAP}


def raw_post(url: str, length: int | None) -> socket.socket:
    """A connection with a /predict request's head sent (Content-Length, or chunked)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Authorization: {AUTH['Authorization']}\r\n{size}\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def send_until_closed(sock: socket.socket, chunked: bool, limit: int) -> int:
    """Write body bytes until the server closes (or ``limit``); the bytes written."""
    block = b" " * (1 << 20)
    frame = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
    sent = 0
    try:
        while sent < limit:
            sock.sendall(frame)
            sent += len(block)
    except OSError:  # reset or broken pipe: the server closed
        pass
    return sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_beyond_the_bound_the_connection_closes(service_url: str, chunked: bool) -> None:
    """A body far over the bound: the server stops reading (at once for an announced length
    over it, at DRAIN_BYTES for a chunked one) and closes; the client could not write past it."""
    endless = 1 << 40
    sock = raw_post(service_url, None if chunked else endless)
    try:
        sent = send_until_closed(sock, chunked, limit=4 * DRAIN_BYTES)
    finally:
        sock.close()
    slack = 32 << 20  # socket buffers on both sides
    assert sent < (CAP + DRAIN_BYTES if chunked else CAP) + slack, sent


def test_a_stalled_body_is_dropped_after_the_time_bound(service_url: str) -> None:
    """A client that stops sending mid-body: the 413 is on the wire at once, and the server
    closes DRAIN_S later instead of waiting for the rest."""
    sock = raw_post(service_url, CAP + (8 << 20))
    try:
        sock.sendall(b" " * (CAP + (1 << 20)))
        t0 = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        waited = time.monotonic() - t0
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 413"), received[:200]
    assert b'"too_large"' in received
    assert DRAIN_S - 1 < waited < DRAIN_S + 10, waited
