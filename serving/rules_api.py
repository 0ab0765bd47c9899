"""The decision rules over HTTP: what ``service.py``'s rule and list routes do. The set in force
(``GET /rules``), a candidate's backtest on the decision log (``POST /rules/backtest``; scope
read, so the review queue can show it), a new set put in force (``POST /admin/rules``) and the
managed lists (``/admin/lists``). A change is written to the decision store, read again by this
worker at once, and announced to the others (they read it within seconds)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from serving.api_models import API_KEY, Identifier
from serving.runtime import Runtime
from training.core import rules

router = APIRouter()
_RUNTIME: Runtime | None = None  # this worker's, installed by service.py at start
MAX_RULES_TEXT = 200_000  # characters of YAML or JSON
MAX_BACKTEST_DAYS = 31  # a backtest runs in a worker: a month of decisions at most
ListName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class RulesBody(BaseModel):
    """A rule set: its YAML or JSON text (errors name its line), or the set as a JSON object."""

    model_config = ConfigDict(extra="forbid")
    rules: str | dict[str, Any] = Field(
        description="YAML or JSON text, or the set itself (docs/rules.md)",
        examples=["version: v2\nrules:\n  - {name: budget, kind: score, min: threshold, "
                  "action: review}\n"],
    )  # fmt: skip


class BacktestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: str | dict[str, Any] | None = Field(
        None, description="The candidate (default: the set in force, against itself)"
    )
    since: datetime = Field(description="First transaction time replayed")
    until: datetime | None = Field(None, description="End, exclusive (default: the latest)")


class ListChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    values: list[Identifier] = Field(min_length=1, max_length=10_000)
    note: str | None = Field(None, max_length=256, description="Why (kept with the entries)")


def parse(body: str | dict[str, Any], field: str = "rules") -> rules.RuleSet:
    """The body's rule set; 400 naming the line and the field of the first problem."""
    text = body if isinstance(body, str) else json.dumps(body, indent=2)
    if len(text) > MAX_RULES_TEXT:
        raise HTTPException(400, f"{field}: over {MAX_RULES_TEXT:,} characters")
    source = field if isinstance(body, str) else f"{field} (as indented JSON)"
    try:
        return rules.parse(text, source)
    except rules.RuleSetError as exc:
        raise HTTPException(400, str(exc)) from exc


def in_force(runtime: Runtime) -> dict[str, Any]:
    """The set in force, as a document and as YAML, with the worker's rules status."""
    loaded = runtime.rules.loaded
    return {
        **runtime.rules.status(),
        "order": loaded.names,
        "rule_set": loaded.ruleset.model_dump(mode="json"),
        "yaml": rules.dump(loaded.ruleset),
    }


def put_in_force(runtime: Runtime, body: RulesBody) -> dict[str, Any]:
    """Store the set, read it here, tell the other workers; 400 (the old set stays) for a set
    that does not parse, reads an unknown field or reuses a version with other rules."""
    ruleset = parse(body.rules)
    try:
        changed = runtime.rules.apply(ruleset, API_KEY.get())
    except rules.RuleSetError as exc:
        raise HTTPException(400, f"rules: {exc}; the set in force stays") from exc
    except Exception as exc:  # the store: nothing changed
        raise HTTPException(503, f"the decision store is unavailable ({exc}); retry") from exc
    if changed:
        runtime.rules_changed()
    return {"version": ruleset.version, "changed": changed, **in_force(runtime)}


def change_list(runtime: Runtime, name: str, body: ListChange, add: bool) -> dict[str, Any]:
    try:
        values = [str(v) for v in body.values]
        n = runtime.rules.change_list(name, values, API_KEY.get(), body.note, add)
    except rules.RuleSetError as exc:
        raise HTTPException(409, str(exc)) from exc
    except Exception as exc:
        raise HTTPException(503, f"the decision store is unavailable ({exc}); retry") from exc
    if n:
        runtime.rules_changed()
    members = len(runtime.rules.loaded.lists.get(name, frozenset()))
    return {"list": name, "added" if add else "removed": n, "members": members}


def list_entries(runtime: Runtime, name: str | None) -> dict[str, Any]:
    """Every list's size, or one list's entries (who added each, when, why)."""
    from training.core import decision_store, rule_store

    url = runtime.rules.url
    if url is None:
        raise HTTPException(409, "no decision store (FRAUD_DECISION_LOG=false): no lists")
    try:
        with decision_store.connect(url) as conn:
            if name is None:
                return {"lists": {k: len(v) for k, v in sorted(rule_store.members(conn).items())}}
            return {"list": name, "entries": rule_store.entries(conn, name)}
    except Exception as exc:
        raise HTTPException(503, f"the decision store is unavailable ({exc}); retry") from exc


def backtest(runtime: Runtime, body: BacktestBody) -> dict[str, Any]:
    """The candidate (default: the set in force) and the set in force over the logged
    decisions: training.core.backtest's report as JSON."""
    from training.core import backtest as bt

    s = runtime.settings
    loaded = runtime.rules.loaded
    candidate = parse(body.rules) if body.rules is not None else loaded.ruleset
    if runtime.rules.url is None:
        raise HTTPException(409, "no decision store (FRAUD_DECISION_LOG=false): nothing logged")
    from training.core.decision_source import as_utc

    since = as_utc(body.since)  # naive times are UTC, as the API's transaction times
    until = as_utc(body.until) if body.until else since + timedelta(days=MAX_BACKTEST_DAYS)
    if until <= since:
        raise HTTPException(400, "until: after since")
    if until - since > timedelta(days=MAX_BACKTEST_DAYS):
        raise HTTPException(
            400, f"until: at most {MAX_BACKTEST_DAYS} days after since (use the CLI for more)"
        )
    try:
        result = bt.backtest(
            runtime.rules.url,
            candidate,
            loaded.ruleset,
            since,
            until,
            loaded.lists,
            s.label_delay_days,
            s.review_budget_per_day,
        )
    except rules.RuleSetError as exc:
        raise HTTPException(400, f"rules: {exc}") from exc
    except ValueError as exc:  # nothing logged in the window
        raise HTTPException(404, str(exc)) from exc
    except Exception as exc:
        raise HTTPException(503, f"the decision store is unavailable ({exc}); retry") from exc
    return result.to_dict()


def install(runtime: Runtime) -> None:
    """The worker's runtime the routes below act on."""
    global _RUNTIME
    _RUNTIME = runtime


def _runtime() -> Runtime:
    if _RUNTIME is None:
        raise HTTPException(503, "the service is starting; retry")
    return _RUNTIME


@router.get("/rules")
def get_rules() -> dict[str, Any]:
    """The rule set in force in this worker (docs/rules.md), its order and status."""
    return in_force(_runtime())


@router.post("/rules/backtest")
def post_backtest(body: BacktestBody) -> dict[str, Any]:
    """Replay the logged decisions through a candidate rule set and the one in force: hits and
    precision per rule, alerts a day against the budget, recall, what moves."""
    return backtest(_runtime(), body)


@router.post("/admin/rules")
def post_rules(body: RulesBody) -> dict[str, Any]:
    """Put a rule set in force without a restart (every worker within seconds); a bad set is a
    400 naming its line and field, and the old one stays. Needs scope admin."""
    return put_in_force(_runtime(), body)


@router.get("/admin/lists")
def get_lists() -> dict[str, Any]:
    """The managed lists and their sizes. Needs scope admin."""
    return list_entries(_runtime(), None)


@router.get("/admin/lists/{name}")
def get_list(name: ListName) -> dict[str, Any]:
    """A list's entries: who added each, when and why. Needs scope admin."""
    return list_entries(_runtime(), name)


@router.post("/admin/lists/{name}")
def post_list(name: ListName, body: ListChange) -> dict[str, Any]:
    """Add customers or terminals to a list (blocked_terminals, allowed_customers, ...); in
    force in every worker within seconds. Needs scope admin."""
    return change_list(_runtime(), name, body, add=True)


@router.post("/admin/lists/{name}/remove")
def post_list_remove(name: ListName, body: ListChange) -> dict[str, Any]:
    """Take entries off a list. Needs scope admin."""
    return change_list(_runtime(), name, body, add=False)
