"""Analysts' sign-in for the review queue. An analyst signs in with an API key holding scopes
label and read; the key stays on the server (it is what the verdicts are sent to the API with,
so the label history names the analyst) and the browser gets a signed, HttpOnly, SameSite
cookie naming the session. Every form carries the session's CSRF token; the sign-in form, before
any session, a token from a signed cookie of its own (double submit)."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

from serving.auth import KeyRing

COOKIE = "fraud_review"
LOGIN_COOKIE = "fraud_review_login"
NEEDED = ("label", "read")


@dataclass
class Session:
    analyst: str  # the key's name: what the label history shows
    key: str = field(repr=False)  # never rendered, never logged
    csrf: str
    expires: float


class SignInError(ValueError):
    """Why a key cannot sign in (no key material in the message)."""


class Sessions:
    """The signed-in analysts of this process (a restart signs everyone out)."""

    def __init__(self, secret: str, keys_file: Path, hours: float) -> None:
        self.signer = URLSafeTimedSerializer(secret, salt="fraud-review")
        self.keys = KeyRing(keys_file)  # re-read when the file changes: revocations count
        self.ttl_s = int(hours * 3600)
        self.live: dict[str, Session] = {}
        self.lock = threading.Lock()

    def sign_in(self, key: str) -> tuple[str, Session]:
        """A new session for a valid key with scopes label and read: (cookie value, session)."""
        stored = self.keys.verify(key.strip())
        if stored is None:
            raise SignInError("this key is not valid (unknown, revoked or expired)")
        missing = [s for s in NEEDED if s not in stored.scopes]
        if missing:
            raise SignInError(
                f"key {stored.name!r} lacks scope {', '.join(missing)}: an analyst key needs "
                "label and read (`fraudops keys create --name NAME --scopes label,read`)"
            )
        sid = secrets.token_urlsafe(32)
        session = Session(stored.name, key.strip(), secrets.token_urlsafe(32),
                          time.time() + self.ttl_s)  # fmt: skip
        with self.lock:
            self._expire()
            self.live[sid] = session
        return self.signer.dumps(sid), session

    def get(self, cookie: str | None) -> Session | None:
        """The session a cookie names (None: none, forged, expired or signed out)."""
        if not cookie:
            return None
        try:
            sid = self.signer.loads(cookie, max_age=self.ttl_s)
        except BadSignature:
            return None
        session = self.live.get(sid)
        if session is None or session.expires < time.time():
            return None
        return session

    def sign_out(self, cookie: str | None) -> None:
        try:
            sid = self.signer.loads(cookie or "", max_age=self.ttl_s)
        except BadSignature:
            return
        with self.lock:
            self.live.pop(sid, None)

    def _expire(self) -> None:
        now = time.time()
        for sid in [s for s, v in self.live.items() if v.expires < now]:
            del self.live[sid]

    def login_token(self) -> tuple[str, str]:
        """A CSRF token for the sign-in form and its signed cookie value."""
        token = secrets.token_urlsafe(24)
        return token, self.signer.dumps(token)

    def login_token_ok(self, cookie: str | None, form_token: str | None) -> bool:
        try:
            token = self.signer.loads(cookie or "", max_age=3600)
        except BadSignature:
            return False
        return bool(form_token) and hmac.compare_digest(str(token), form_token or "")


def csrf_ok(session: Session, form_token: str | None) -> bool:
    return bool(form_token) and hmac.compare_digest(session.csrf, form_token or "")
