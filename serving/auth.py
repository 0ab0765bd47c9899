"""Who may call what: API keys with scopes checked before BentoML reads a request, and per-key
token-bucket rate limits (requests and transactions a second) answered 429 + Retry-After.

The buckets live in Redis when the state does (shared by every worker and replica, one script
call a request); otherwise in the process (with the memory state there is one worker, so the
limit is exact). While Redis is unreachable each worker falls back to its own buckets for a
second at a time: a key then gets at most its limit per worker, never a 5xx.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving import telemetry as tm
from serving.api_models import API_KEY
from serving.http_guard import LOOPBACK, ASGIApp, Scope, json_error, read_body
from training.core import api_keys
from training.core.api_keys import ApiKey

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger("bentoml.fraud_service.auth")

# Path -> scope it needs; a path matches its entry or an entry ending in "/" as a prefix.
ROUTE_SCOPES: dict[str, api_keys.Scope] = {
    "/predict": "score",
    "/explain": "score",  # scores as /predict does (records nothing)
    "/explain/": "read",  # a logged decision's reason codes
    "/feedback": "label",
    "/test": "read",
    "/state/": "read",
    "/rules": "read",  # the set in force
    "/rules/": "read",  # a backtest changes nothing (the review queue shows it)
    "/admin/": "admin",
}
# No key needed: probes, health and the API's own documentation.
OPEN = frozenset(
    {"/health", "/healthz", "/livez", "/readyz", "/", "/docs", "/docs.json", "/openapi.json"}
)
OPEN_PREFIXES = ("/static_content/",)
COUNTED = frozenset(
    {"/predict", "/explain", "/feedback"}
)  # paths whose transactions the tx limit counts
RELOAD_EVERY_S = 1.0  # the key file is re-read at most this often when it changed
FALLBACK_S = 1.0  # after a Redis error, local buckets for this long before trying Redis again


def required_scope(path: str) -> api_keys.Scope | None:
    """The scope a path needs; None for an open path. Unknown paths need a valid key."""
    if path in OPEN or path.startswith(OPEN_PREFIXES):
        return None
    if path in ROUTE_SCOPES:
        return ROUTE_SCOPES[path]
    for prefix, scope in ROUTE_SCOPES.items():
        if prefix.endswith("/") and path.startswith(prefix):
            return scope
    return "read"


class KeyRing:
    """The active keys of the key file, re-read when the file changes (revocations take effect
    within a second, in every worker)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.by_id: dict[str, ApiKey] = {}
        self.verified: dict[str, ApiKey] = {}  # key -> its record, once its hash matched
        self.mtime_ns = -1
        self.checked = 0.0
        self.refresh(force=True)
        if not self.by_id:
            log.error("no active API key in %s: every request that needs one gets a 401", path)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.checked < RELOAD_EVERY_S:
            return
        self.checked = now
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            mtime = 0
        if mtime == self.mtime_ns:
            return
        try:
            keys = api_keys.load(self.path).active()
        except (OSError, ValueError) as exc:
            log.error("key file %s unreadable, keeping the keys loaded before: %s", self.path, exc)
            return
        self.by_id = {k.id: k for k in keys}
        self.verified.clear()
        self.mtime_ns = mtime
        tm.API_KEYS.set(len(self.by_id))

    def verify(self, key: str) -> ApiKey | None:
        self.refresh()
        known = self.verified.get(key)  # emptied whenever the key file changes
        if known is not None:
            return known
        kid = api_keys.key_id(key)
        stored = self.by_id.get(kid) if kid else None
        if stored is None or not api_keys.matches(stored, key):
            return None
        if len(self.verified) < 10_000:  # bounded: only keys that matched a stored hash
            self.verified[key] = stored
        return stored


class LocalBuckets:
    """Token buckets in this process: capacity one second of the rate (at least the cost)."""

    def __init__(self) -> None:
        self.buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)

    async def take(self, asks: list[tuple[str, float, float]]) -> float:
        """``asks``: (bucket name, rate a second, cost). Takes all or none; returns 0 when
        taken, else the seconds until all would be available."""
        now = time.monotonic()
        wait, levels = 0.0, []
        for name, rate, cost in asks:
            cap = max(rate, cost)
            tokens, at = self.buckets.get(name, (cap, now))
            tokens = min(cap, tokens + (now - at) * rate)
            levels.append(tokens)
            if tokens < cost:
                wait = max(wait, (cost - tokens) / rate)
        if wait == 0.0:
            for (name, _, cost), tokens in zip(asks, levels, strict=True):
                self.buckets[name] = (tokens - cost, now)
        return wait


# KEYS: bucket keys; ARGV: per bucket (rate, cost). Server time, so workers' clocks do not matter.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local wait, levels = 0, {}
for i, key in ipairs(KEYS) do
  local rate, cost = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local cap = math.max(rate, cost)
  local b = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(b[1]) or cap, tonumber(b[2]) or now
  tokens = math.min(cap, tokens + (now - at) * rate)
  levels[i] = tokens
  if tokens < cost then wait = math.max(wait, (cost - tokens) / rate) end
end
if wait == 0 then
  for i, key in ipairs(KEYS) do
    local rate, cost = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
    redis.call('HSET', key, 'tokens', tostring(levels[i] - cost), 'at', tostring(now))
    redis.call('PEXPIRE', key, math.ceil(math.max(rate, cost) / rate * 1000) + 1000)
  end
end
return tostring(wait)
"""


class RedisBuckets:
    """The same buckets in Redis, shared by every worker and replica; bounded timeouts (50 ms)
    and no retries: on an error this worker uses :class:`LocalBuckets` for ``FALLBACK_S``."""

    def __init__(self, url: str, prefix: str, timeout_s: float = 0.05) -> None:
        self.url, self.prefix, self.timeout_s = url, prefix, timeout_s
        self.client: redis.asyncio.Redis | None = None
        self.script: Any = None
        self.local = LocalBuckets()
        self.down_until = 0.0

    def _connect(self) -> Any:
        import redis.asyncio as aredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.client = aredis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.script = self.client.register_script(TAKE)
        return self.script

    async def take(self, asks: list[tuple[str, float, float]]) -> float:
        import redis

        if time.monotonic() < self.down_until:
            return await self.local.take(asks)
        script = self.script or self._connect()
        args: list[float] = []
        for _, rate, cost in asks:
            args += [rate, cost]
        try:
            wait = await script(keys=[f"{self.prefix}:rl:{n}" for n, _, _ in asks], args=args)
            return float(wait)
        except (redis.RedisError, OSError) as exc:
            self.down_until = time.monotonic() + FALLBACK_S
            tm.RATE_LIMIT_FALLBACK.inc()
            log.warning("rate limits: Redis unreachable (%s), per-worker buckets for now", exc)
            return await self.local.take(asks)


def transactions_in(body: bytes) -> int:
    """An upper bound of the transactions (or labels) in a /predict or /feedback body: its JSON
    objects less the envelope. Structural braces cannot be escaped in JSON, so no body can
    count fewer than it holds; braces inside strings only count against their sender."""
    return max(1, body.count(b"{") - 1)


def bearer(scope: Scope) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


class ApiKeyAuth:
    """ASGI middleware: 401 without a valid key, 403 without the path's scope, 429 +
    Retry-After beyond the key's rate limits; the key's name goes to ``scope["state"]``."""

    def __init__(
        self,
        app: ASGIApp,
        keys_file: Path,
        redis_url: str | None = None,
        redis_prefix: str = "fraud",
        metrics_need_read: bool = False,
    ) -> None:
        self.app = app
        self.keys = KeyRing(keys_file)
        self.buckets: LocalBuckets | RedisBuckets = (
            RedisBuckets(redis_url, redis_prefix) if redis_url else LocalBuckets()
        )
        self.metrics_need_read = metrics_need_read

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/metrics":
            need = "read" if self.metrics_need_read else None
        else:
            need = required_scope(path)
        if need is None:
            await self.app(scope, receive, send)
            return
        key = bearer(scope)
        stored = self.keys.verify(key) if key else None
        if stored is None:
            tm.AUTH_FAILURES.labels("missing" if key is None else "invalid").inc()
            await json_error(
                send,
                401,
                "missing API key: send `Authorization: Bearer <key>` (fraudops keys create)"
                if key is None
                else "invalid or revoked API key",
                {"loc": ["header", "authorization"], "type": "unauthenticated"},
                ((b"www-authenticate", b"Bearer"),),
            )
            return
        if need not in stored.scopes:
            tm.AUTH_FAILURES.labels("scope").inc()
            await json_error(
                send,
                403,
                f"API key {stored.name!r} lacks scope {need!r} for {path}",
                {"loc": ["header", "authorization"], "type": "forbidden", "scope": need},
            )
            return
        scope.setdefault("state", {})["api_key"] = stored.name
        API_KEY.set(stored.name)  # this request's task: the decision log reads it
        if stored.requests_per_s or (stored.transactions_per_s and path in COUNTED):
            receive = await self._limit(scope, receive, send, stored)
            if receive is None:
                return
        await self.app(scope, receive, send)

    async def _limit(
        self, scope: Scope, receive: Callable[[], Awaitable[Any]], send, stored: ApiKey
    ) -> Any:
        """Take the request's tokens; None when it was answered 429 (the body is read and
        replayed when transactions are counted)."""
        asks: list[tuple[str, float, float]] = []
        if stored.requests_per_s:
            asks.append((f"{stored.id}:r", stored.requests_per_s, 1.0))
        if stored.transactions_per_s and scope["path"] in COUNTED:
            body, receive = await read_body(receive)
            asks.append((f"{stored.id}:t", stored.transactions_per_s, transactions_in(body or b"")))
        wait = await self.buckets.take(asks)
        if wait <= 0:
            return receive
        tm.RATE_LIMITED.labels(stored.name).inc()
        retry = max(1, math.ceil(wait))
        rates = ", ".join(
            f"{rate:g} {'requests' if name.endswith(':r') else 'transactions'}/s"
            for name, rate, _ in asks
        )
        await json_error(
            send,
            429,
            f"rate limit of API key {stored.name!r} ({rates}) reached; retry in {retry} s",
            {"loc": ["header", "authorization"], "type": "rate_limited", "retry_after_s": retry},
            ((b"retry-after", str(retry).encode()),),
        )
        return None


class LoopbackOnly:
    """``FRAUD_AUTH=off``: no keys, and only loopback clients may call anything but the open
    paths (a laptop or a test; any network peer gets a 403)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive, send) -> None:
        client = scope.get("client")
        if (
            scope["type"] != "http"
            or (client and client[0] in LOOPBACK)
            or scope["path"] == "/metrics"
            or required_scope(scope["path"]) is None
        ):
            await self.app(scope, receive, send)
            return
        await json_error(
            send,
            403,
            "FRAUD_AUTH=off: only loopback clients are served; set FRAUD_AUTH=keys",
            {"loc": ["client"], "type": "forbidden"},
        )
