"""API keys: scoped credentials stored only as SHA-256 hashes in a JSON key file, managed by
``fraudops keys`` and read (and re-read when it changes) by the service.

A key reads ``fm_<id>_<secret>``: the id (8 hex) is public and names the key in lists and
logs; the secret is 256 random bits, so one SHA-256 is a sufficient hash (no password
stretching: nothing here can be guessed). Each key has a name, its scopes and optional rate
limits (requests and transactions a second, token buckets enforced by the service).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

Scope = Literal["score", "label", "read", "admin"]
SCOPES: tuple[Scope, ...] = ("score", "label", "read", "admin")
PREFIX = "fm_"


class ApiKey(BaseModel):
    """One stored key: never the key itself, only its hash."""

    id: str = Field(pattern=r"^[0-9a-f]{8}$")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    scopes: list[Scope] = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    requests_per_s: float | None = Field(None, gt=0, description="None: no request limit")
    transactions_per_s: float | None = Field(None, gt=0, description="None: no limit")
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyFile(BaseModel):
    """The key file's content."""

    keys: list[ApiKey] = []

    def active(self) -> list[ApiKey]:
        return [k for k in self.keys if k.active]

    def find(self, name_or_id: str) -> ApiKey | None:
        """The active key with this name or id."""
        return next((k for k in self.active() if name_or_id in (k.name, k.id)), None)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str | None:
    """The public id of a well-formed key, else None."""
    n = len(PREFIX)
    if not key.startswith(PREFIX) or len(key) < n + 10 or key[n + 8] != "_":
        return None
    return key[n : n + 8]


def matches(stored: ApiKey, key: str) -> bool:
    """Constant-time comparison of the key's hash with the stored one."""
    return hmac.compare_digest(digest(key), stored.sha256)


def load(path: Path) -> KeyFile:
    """The key file, or an empty one when it does not exist."""
    if not path.exists():
        return KeyFile()
    return KeyFile.model_validate_json(path.read_bytes())


def save(path: Path, keys: KeyFile) -> None:
    """Write atomically (a reader never sees half a file), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(keys.model_dump_json(indent=2, exclude_none=True) + "\n")
    os.replace(tmp, path)


def parse_scopes(text: str | Iterable[str]) -> list[Scope]:
    """``"score,label"`` -> ``["score", "label"]``; ValueError naming an unknown scope."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes: list[Scope] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        if item not in SCOPES:
            raise ValueError(f"unknown scope {item!r}: choose from {', '.join(SCOPES)}")
        if item not in scopes:
            scopes.append(item)
    if not scopes:
        raise ValueError(f"give at least one scope of {', '.join(SCOPES)}")
    return scopes


def create(
    path: Path,
    name: str,
    scopes: list[Scope],
    requests_per_s: float | None = None,
    transactions_per_s: float | None = None,
) -> tuple[str, ApiKey]:
    """Add a key to the file; returns the key (shown once, never stored) and its record."""
    keys = load(path)
    if keys.find(name) is not None:
        raise ValueError(f"an active key named {name!r} exists: revoke it first or pick a name")
    key_hex = secrets.token_hex(4)
    while any(k.id == key_hex for k in keys.keys):
        key_hex = secrets.token_hex(4)
    key = f"{PREFIX}{key_hex}_{secrets.token_urlsafe(32)}"
    record = ApiKey(
        id=key_hex,
        name=name,
        scopes=scopes,
        sha256=digest(key),
        requests_per_s=requests_per_s,
        transactions_per_s=transactions_per_s,
        created_at=datetime.now(UTC),
    )
    keys.keys.append(record)
    save(path, keys)
    return key, record


def revoke(path: Path, name_or_id: str) -> ApiKey:
    """Mark the active key with this name or id revoked (kept in the file for the record)."""
    keys = load(path)
    record = keys.find(name_or_id)
    if record is None:
        raise LookupError(f"no active key named or with id {name_or_id!r} in {path}")
    record.revoked_at = datetime.now(UTC)
    save(path, keys)
    return record


def ensure_local_key(path: Path, local: Path) -> tuple[str | None, bool]:
    """The embedded default's key: with no key file, create one key ``local`` with every scope
    and keep it in ``local`` (owner-only, ignored by git) so ``make run`` can print a curl line.
    Returns (the local key if known, whether it was created now)."""
    if not path.exists() or not load(path).active():
        key, _ = create(path, "local", list(SCOPES))
        local.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
        return key, True
    if local.exists():
        key = local.read_text().strip()
        stored = load(path).find("local")
        if stored is not None and matches(stored, key):
            return key, False
    return None, False
