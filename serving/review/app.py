"""The review queue's web app (FastAPI, Jinja2 templates, no build step): sign-in with an
analyst key, the day's queue, a page per decision, the day's counts, and the rules with a
backtest. Verdicts go to the API's ``/feedback`` with the analyst's own key (the label history
names them, the online state learns them at once); the pages read the decision store."""

from __future__ import annotations

import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from serving.review import queue
from serving.review.session import COOKIE, LOGIN_COOKIE, Session, Sessions, SignInError, csrf_ok
from training.core import decision_store
from training.core.config import Settings, get_settings

log = logging.getLogger("fraud_review")
TEMPLATES = Path(__file__).with_name("templates")
PAGE = 20  # queue items a page
REASONS = 3  # reason codes a queue item shows
GIVEN_TTL_S = 600.0  # a verdict given here stays hidden from the queue this long at most


class NotSignedIn(Exception):
    pass


def create_app(settings: Settings) -> FastAPI:
    """The app for these settings (the store, the API, the key file, the cookie secret)."""
    secret = settings.review_secret.get_secret_value() if settings.review_secret else None
    secret = secret or None  # an empty one signs nothing
    if secret is None:
        log.warning("FRAUD_REVIEW_SECRET unset: a random one, so a restart signs analysts out")
    sessions = Sessions(secret or secrets.token_urlsafe(32), settings.api_keys_file,
                        settings.review_session_hours)  # fmt: skip
    engine = decision_store.engine_for(settings.decision_db_url)
    api = httpx.Client(base_url=settings.api_url, timeout=30)
    pages = Jinja2Templates(directory=str(TEMPLATES))
    budget = settings.review_budget_per_day
    # Verdicts given here, by transaction: hidden from the queue until the store has them (the
    # label is durable in the API's journal at once, in the store a moment later).
    given: dict[str, float] = {}
    app = FastAPI(title="fraud-mlops review queue", docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip

    def signed_in(request: Request) -> Session:
        session = sessions.get(request.cookies.get(COOKIE))
        if session is None:
            raise NotSignedIn
        return session

    def checked(request: Request, token: str | None) -> Session:
        session = signed_in(request)
        if not csrf_ok(session, token):
            raise HTTPException(403, "this form's CSRF token is missing or wrong: reload the page")
        return session

    def call(session: Session, method: str, path: str, **kw: Any) -> httpx.Response:
        """The API with the analyst's key; 502 when it cannot be reached."""
        try:
            return api.request(
                method, path, headers={"Authorization": f"Bearer {session.key}"}, **kw
            )
        except httpx.HTTPError as exc:
            raise HTTPException(502, f"the fraud API at {settings.api_url} is unreachable: "
                                f"{type(exc).__name__}") from exc  # fmt: skip

    def api_json(request: Request, session: Session, path: str, **kw: Any) -> Any:
        """An API answer's JSON; its refusal as this page's error (a refused key signs out)."""
        r = call(session, kw.pop("method", "GET"), path, **kw)
        if r.status_code == 401:
            sessions.sign_out(request.cookies.get(COOKIE))
            raise HTTPException(401, "the API refused this analyst's key (revoked?): sign in")
        if r.status_code != 200:
            raise HTTPException(502, f"the API answered {r.status_code} to {path}: {r.text[:300]}")
        return r.json()

    def render(request: Request, name: str, session: Session | None, **context: Any) -> Response:
        return pages.TemplateResponse(
            request, name, {"session": session, "budget": budget, **context}
        )

    def day_of(value: str | None) -> date | None:
        if value:
            try:
                return date.fromisoformat(value)
            except ValueError as exc:
                raise HTTPException(400, "day: a date, YYYY-MM-DD") from exc
        with engine.connect() as conn:
            return queue.latest_day(conn)

    @app.exception_handler(NotSignedIn)
    def _sign_in_first(request: Request, exc: NotSignedIn) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, error: str | None = None) -> Response:
        token, cookie = sessions.login_token()
        page = render(request, "login.html", None, csrf=token, error=error)
        page.set_cookie(LOGIN_COOKIE, cookie, max_age=3600, httponly=True, samesite="strict",
                        secure=settings.review_secure_cookie)  # fmt: skip
        return page

    @app.post("/login")
    def login(
        request: Request, key: Annotated[str, Form()], csrf: Annotated[str, Form()] = ""
    ) -> Response:
        if not sessions.login_token_ok(request.cookies.get(LOGIN_COOKIE), csrf):
            raise HTTPException(403, "the sign-in form's CSRF token is missing or wrong: reload")
        try:
            cookie, session = sessions.sign_in(key)
        except SignInError as exc:
            token, login_cookie = sessions.login_token()
            page = render(request, "login.html", None, csrf=token, error=str(exc))
            page.status_code = 401
            page.set_cookie(LOGIN_COOKIE, login_cookie, max_age=3600, httponly=True,
                            samesite="strict", secure=settings.review_secure_cookie)  # fmt: skip
            return page
        log.info("analyst %s signed in", session.analyst)
        out = RedirectResponse("/queue", status_code=303)
        out.set_cookie(COOKIE, cookie, max_age=int(sessions.ttl_s), httponly=True,
                       samesite="strict", secure=settings.review_secure_cookie)  # fmt: skip
        out.delete_cookie(LOGIN_COOKIE)
        return out

    @app.post("/logout")
    def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        checked(request, csrf)
        sessions.sign_out(request.cookies.get(COOKIE))
        out = RedirectResponse("/login", status_code=303)
        out.delete_cookie(COOKIE)
        return out

    @app.get("/")
    def home() -> Response:
        return RedirectResponse("/queue", status_code=303)

    def reasons_of(session: Session, ids: list[str], k: int) -> dict[str, Any]:
        """Reason codes of logged decisions from the API (in parallel); a failure is shown."""

        def one(tx: str) -> Any:
            r = call(session, "GET", f"/explain/{tx}", params={"top_k": k})
            return r.json()["reasons"] if r.status_code == 200 else f"unavailable ({r.status_code})"

        with ThreadPoolExecutor(max_workers=4) as pool:
            return dict(zip(ids, pool.map(one, ids), strict=True))

    @app.get("/queue", response_class=HTMLResponse)
    def queue_page(request: Request, day: str | None = None) -> Response:
        session = signed_in(request)
        when = day_of(day)
        items: list[dict[str, Any]] = []
        counts = None
        if when is not None:
            cutoff = time.time() - GIVEN_TTL_S
            for tx in [t for t, at in given.items() if at < cutoff]:
                given.pop(tx, None)
            with engine.connect() as conn:
                items = queue.queue(conn, when, budget, PAGE + len(given))
                items = [i for i in items if i["transaction_id"] not in given][:PAGE]
                counts = queue.counts(conn, when, budget)
                for item in items:
                    item["customer"] = queue.history(conn, "customer_id", item["customer_id"],
                                                     item["tx_time"])  # fmt: skip
                    item["terminal"] = queue.history(conn, "terminal_id", item["terminal_id"],
                                                     item["tx_time"])  # fmt: skip
            reasons = reasons_of(session, [i["transaction_id"] for i in items], REASONS)
            for item in items:
                item["reasons"] = reasons[item["transaction_id"]]
        return render(request, "queue.html", session, day=when, items=items, counts=counts)

    @app.get("/decisions/{transaction_id}", response_class=HTMLResponse)
    def decision_page(request: Request, transaction_id: str) -> Response:
        session = signed_in(request)
        with engine.connect() as conn:
            row = queue.decision(conn, transaction_id)
            if row is None:
                raise HTTPException(404, f"transaction {transaction_id!r} is not in the log")
            customer = queue.history(conn, "customer_id", row["customer_id"], row["tx_time"])
            terminal = queue.history(conn, "terminal_id", row["terminal_id"], row["tx_time"])
        reasons = reasons_of(session, [transaction_id], 6)[transaction_id]
        return render(request, "decision.html", session, d=row, customer=customer,
                      terminal=terminal, reasons=reasons)  # fmt: skip

    @app.post("/decisions/{transaction_id}/verdict")
    def verdict(
        request: Request,
        transaction_id: str,
        verdict: Annotated[str, Form()],
        csrf: Annotated[str, Form()] = "",
        back: Annotated[str, Form()] = "/queue",
    ) -> Response:
        session = checked(request, csrf)
        if verdict not in ("fraud", "genuine"):
            raise HTTPException(400, "verdict: fraud or genuine")
        label = {"transaction_id": transaction_id, "is_fraud": verdict == "fraud"}
        r = call(session, "POST", "/feedback", json={"labels": [label]})
        if r.status_code == 401:
            sessions.sign_out(request.cookies.get(COOKIE))
            raise HTTPException(401, "the API refused this analyst's key (revoked?): sign in")
        if r.status_code != 200 or r.json().get("unknown_transaction_ids"):
            raise HTTPException(502, f"the verdict was not recorded: the API answered "
                                f"{r.status_code} {r.text[:300]}")  # fmt: skip
        given[transaction_id] = time.time()
        log.info("analyst %s: %s %s", session.analyst, transaction_id, verdict)
        target = back if back.startswith("/") and not back.startswith("//") else "/queue"
        return RedirectResponse(target, status_code=303)

    @app.get("/counts", response_class=HTMLResponse)
    def counts_page(request: Request, day: str | None = None) -> Response:
        session = signed_in(request)
        when = day_of(day)
        with engine.connect() as conn:
            counts = queue.counts(conn, when, budget) if when else None
        return render(request, "counts.html", session, day=when, counts=counts)

    @app.get("/rules", response_class=HTMLResponse)
    def rules_page(request: Request) -> Response:
        session = signed_in(request)
        live = api_json(request, session, "/rules")
        return render(request, "rules.html", session, live=live, result=None, candidate=None)

    @app.post("/rules/backtest", response_class=HTMLResponse)
    def rules_backtest(
        request: Request,
        since: Annotated[str, Form()],
        until: Annotated[str, Form()] = "",
        candidate: Annotated[str, Form()] = "",
        csrf: Annotated[str, Form()] = "",
    ) -> Response:
        session = checked(request, csrf)
        body: dict[str, Any] = {"since": since, "until": until or None,
                                "rules": candidate or None}  # fmt: skip
        r = call(session, "POST", "/rules/backtest", json=body)
        live = api_json(request, session, "/rules")
        result = r.json() if r.status_code == 200 else None
        error = None
        if result is None:
            try:
                error = str(r.json().get("detail", r.text))[:2000]
            except ValueError:  # not JSON: a proxy's page
                error = f"{r.status_code}: {r.text[:300]}"
        return render(request, "rules.html", session, live=live, result=result,
                      candidate=candidate, since=since, until=until, error=error)  # fmt: skip

    @app.exception_handler(HTTPException)
    def _error_page(request: Request, exc: HTTPException) -> Response:
        page = render(request, "error.html", sessions.get(request.cookies.get(COOKIE)),
                      status=exc.status_code, detail=exc.detail)  # fmt: skip
        page.status_code = exc.status_code
        return page

    app.state.sessions = sessions
    return app


def from_env() -> FastAPI:
    """The app for the environment's settings (``fraudops review``'s uvicorn factory)."""
    return create_app(get_settings())
