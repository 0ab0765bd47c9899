"""The rules' durable state, in the decision store's database (PostgreSQL in the stack, SQLite
for ``make run``; migration 0005): every rule set version applied, the one in force (the latest
applied), and the managed lists' entries with who added them and when. Serving loads them at
start and when an update is announced; ``fraudops rules`` and ``fraudops lists`` write them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from training.core import rules
from training.core.decision_store import metadata

rule_sets = sa.Table(
    "rule_sets",
    metadata,
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("body", sa.Text, nullable=False),  # the set as YAML (rules.dump)
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("applied_by", sa.String(64), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_rule_sets_applied", "applied_at"),
)

list_entries = sa.Table(
    "list_entries",
    metadata,
    sa.Column("list_name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(64), primary_key=True),
    sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("added_by", sa.String(64), nullable=True),
    sa.Column("note", sa.String(256), nullable=True),
)


def apply(conn: sa.Connection, ruleset: rules.RuleSet, by: str | None) -> bool:
    """Put ``ruleset`` in force (its version stored if new). A version is written once: the
    same number with other rules is refused (RuleSetError). False: it was already in force."""
    body = rules.dump(ruleset)
    now = datetime.now(UTC)
    row = conn.execute(sa.select(rule_sets).where(rule_sets.c.version == ruleset.version)).first()
    if row is not None and rules.parse(row.body) != ruleset:
        raise rules.RuleSetError(
            f"version {ruleset.version!r} was applied before with other rules: give the changed "
            "set a new version"
        )
    current = active(conn)
    if current is not None and current.version == ruleset.version:
        return False
    if row is None:
        conn.execute(
            rule_sets.insert().values(
                version=ruleset.version, body=body, applied_at=now, applied_by=by, created_at=now
            )
        )
    else:  # back to an earlier version: it is the latest applied again
        conn.execute(
            rule_sets.update()
            .where(rule_sets.c.version == ruleset.version)
            .values(applied_at=now, applied_by=by)
        )
    return True


def active(conn: sa.Connection) -> rules.RuleSet | None:
    """The rule set in force: the latest applied (None: none ever applied)."""
    row = conn.execute(
        sa.select(rule_sets.c.body)
        .where(rule_sets.c.applied_at.is_not(None))
        .order_by(rule_sets.c.applied_at.desc(), rule_sets.c.version.desc())
        .limit(1)
    ).first()
    return rules.parse(row.body, "the stored rule set") if row else None


def history(conn: sa.Connection) -> list[dict[str, Any]]:
    """Every version, latest applied first."""
    rows = conn.execute(
        sa.select(rule_sets.c.version, rule_sets.c.applied_at, rule_sets.c.applied_by).order_by(
            rule_sets.c.applied_at.desc()
        )
    )
    return [dict(r._mapping) for r in rows]


def add(
    conn: sa.Connection, name: str, values: Iterable[str], by: str | None, note: str | None = None
) -> int:
    """Add ``values`` to the list ``name``; how many were new."""
    now = datetime.now(UTC)
    have = set(members(conn).get(name, frozenset()))
    new = [v for v in dict.fromkeys(str(v).strip() for v in values) if v and v not in have]
    if new:
        conn.execute(
            list_entries.insert(),
            [{"list_name": name, "value": v, "added_at": now, "added_by": by, "note": note}
             for v in new],
        )  # fmt: skip
    return len(new)


def remove(conn: sa.Connection, name: str, values: Iterable[str]) -> int:
    """Remove ``values`` from the list ``name``; how many were there."""
    gone = conn.execute(
        list_entries.delete().where(
            (list_entries.c.list_name == name)
            & list_entries.c.value.in_([str(v).strip() for v in values])
        )
    )
    return int(gone.rowcount or 0)


def members(conn: sa.Connection) -> dict[str, frozenset[str]]:
    """Every list's members."""
    out: dict[str, set[str]] = {}
    for name, value in conn.execute(sa.select(list_entries.c.list_name, list_entries.c.value)):
        out.setdefault(name, set()).add(value)
    return {k: frozenset(v) for k, v in out.items()}


def entries(conn: sa.Connection, name: str) -> list[dict[str, Any]]:
    """A list's entries with who added them and when, newest first."""
    rows = conn.execute(
        sa.select(list_entries)
        .where(list_entries.c.list_name == name)
        .order_by(list_entries.c.added_at.desc(), list_entries.c.value)
    )
    return [dict(r._mapping) for r in rows]
