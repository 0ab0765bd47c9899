"""What the review queue shows, read from the decision store (read only): a day's queue (its
decisions whose action is review, by score, within the review budget), a decision with its
label history, a customer's or a terminal's recent history, and the day's counts. Verdicts are
not written here: they go through the API's label path (:mod:`serving.review.app`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from training.core import decision_store as ds

D, L = ds.decisions, ds.label_events
HISTORY_DAYS = 7


@dataclass
class DayCounts:
    day: date
    queued: int  # review decisions within the budget
    over_budget: int  # review decisions past it (not queued)
    reviewed: int  # queued ones with a label
    confirmed_fraud: int
    confirmed_genuine: int
    declined: int  # the rules declined these outright

    @property
    def pending(self) -> int:
        return self.queued - self.reviewed


def latest_day(conn: sa.Connection) -> date | None:
    """The stream's current day: the latest day a decision was logged for (None: none)."""
    value = conn.execute(sa.select(sa.func.max(D.c.tx_day))).scalar()
    return value if value is None or isinstance(value, date) else date.fromisoformat(str(value))


def _budgeted(day: date, budget: int) -> Any:
    """Subquery: the day's review decisions, highest score first, the first ``budget``."""
    return (
        sa.select(D.c.transaction_id, D.c.probability)
        .where((D.c.tx_day == day) & (D.c.action == "review"))
        .order_by(D.c.probability.desc(), D.c.transaction_id)
        .limit(budget)
        .subquery("budgeted")
    )


def queue(conn: sa.Connection, day: date, budget: int, limit: int = 20) -> list[dict[str, Any]]:
    """The day's pending queue: review decisions within the budget, no label yet, by score."""
    budgeted = _budgeted(day, budget)
    labelled = sa.select(L.c.transaction_id).where(L.c.transaction_id == D.c.transaction_id)
    q = (
        sa.select(D)
        .join(budgeted, budgeted.c.transaction_id == D.c.transaction_id)
        .where(D.c.tx_day == day, ~sa.exists(labelled))
        .order_by(D.c.probability.desc(), D.c.transaction_id)
        .limit(limit)
    )
    return [dict(r._mapping) for r in conn.execute(q)]


def counts(conn: sa.Connection, day: date, budget: int) -> DayCounts:
    budgeted = _budgeted(day, budget)
    latest = ds.latest_labels()
    reviewed = conn.execute(
        sa.select(latest.c.label, sa.func.count())
        .join(budgeted, budgeted.c.transaction_id == latest.c.transaction_id)
        .group_by(latest.c.label)
    ).all()
    by_label = {bool(k): int(n) for k, n in reviewed}
    actions: dict[str | None, int] = dict(
        conn.execute(
            sa.select(D.c.action, sa.func.count()).where(D.c.tx_day == day).group_by(D.c.action)
        ).all()
    )
    review = int(actions.get("review", 0))
    queued = min(review, budget)
    return DayCounts(
        day,
        queued,
        review - queued,
        sum(by_label.values()),
        by_label.get(True, 0),
        by_label.get(False, 0),
        int(actions.get("decline", 0)),
    )


def decision(conn: sa.Connection, transaction_id: str) -> dict[str, Any] | None:
    """A logged decision with its label history (who gave each label: the key's name)."""
    row = ds.decision(conn, transaction_id)
    if row is None:
        return None
    row["labels"] = ds.label_history(conn, transaction_id)
    return row


def history(
    conn: sa.Connection, column: str, value: str, before: datetime, days: int = HISTORY_DAYS
) -> dict[str, Any]:
    """A customer's or a terminal's logged transactions in the ``days`` before ``before``
    (this one included), with their latest labels: count, amount, confirmed frauds, the last
    ten."""
    latest = ds.latest_labels()
    key = D.c[column]
    q = (
        sa.select(
            D.c.transaction_id,
            D.c.tx_time,
            D.c.amount_cents,
            D.c.probability,
            D.c.action,
            latest.c.label,
        )
        .outerjoin(latest, latest.c.transaction_id == D.c.transaction_id)
        .where(key == value, D.c.tx_time > before - timedelta(days=days), D.c.tx_time <= before)
        .order_by(D.c.tx_time.desc())
    )
    rows = [dict(r._mapping) for r in conn.execute(q)]
    return {
        "days": days,
        "count": len(rows),
        "amount": sum(r["amount_cents"] for r in rows) / 100,
        "frauds": sum(1 for r in rows if r["label"]),
        "recent": rows[:10],
    }
