"""The decision rules in a worker: read from the decision store (SQLite and PostgreSQL), kept
when the store cannot be read, refreshed when due or told."""

from __future__ import annotations

import numpy as np

from serving.decision_rules import DecisionRules
from training.core import decision_store as ds
from training.core import rule_store, rules

CANDIDATE = rules.parse("""
version: v2
rules:
  - {name: block-t9, kind: list, entity: terminal, list: blocked_terminals, action: decline}
  - {name: budget, kind: score, min: threshold, action: review}
""")
COLUMNS = {
    "customer_id": np.array(["c1", "c2", "c3"], dtype=object),
    "terminal_id": np.array(["t1", "t9", "t3"], dtype=object),
}
SCORE = np.array([0.1, 0.1, 0.95])


def test_a_worker_decides_with_what_the_store_holds_once_it_reads_it_again(store_url: str) -> None:
    ds.upgrade(store_url)
    live = DecisionRules(store_url, refresh_s=3600)
    assert live.version == "default-1" and live.error is None
    first = live.decide(COLUMNS, SCORE, 0.5)
    assert first.actions() == ["approve", "approve", "decline"]  # 0.95: the default's high band
    assert first.rule == [None, None, "high-score"] and first.version == "default-1"

    with ds.connect(store_url) as conn, conn.begin():
        rule_store.apply(conn, CANDIDATE, "alice")
        rule_store.add(conn, "blocked_terminals", ["t9"], "alice")
    assert live.refresh() is False and live.version == "default-1"  # not due yet
    assert live.refresh(force=True) is True  # told (an admin call, an announcement)
    decided = live.decide(COLUMNS, SCORE, 0.5)
    assert decided.actions() == ["approve", "decline", "review"]
    assert decided.rule == [None, "block-t9", "budget"] and decided.version == "v2"
    assert live.status()["lists"] == {"blocked_terminals": 1}
    assert live.refresh(force=True) is False  # nothing changed since

    polled = DecisionRules(store_url, refresh_s=0)  # due at every upkeep
    with ds.connect(store_url) as conn, conn.begin():
        rule_store.remove(conn, "blocked_terminals", ["t9"])
    assert polled.refresh() is True
    assert polled.decide(COLUMNS, SCORE, 0.5).actions() == ["approve", "approve", "review"]


def test_a_store_that_cannot_be_read_leaves_the_last_rules_in_force(store_url: str) -> None:
    ds.upgrade(store_url)
    with ds.connect(store_url) as conn, conn.begin():
        rule_store.apply(conn, CANDIDATE, "alice")
    live = DecisionRules(store_url, refresh_s=0)
    assert live.version == "v2"
    live.url = "postgresql+psycopg2://nobody@127.0.0.1:1/none"  # nothing listens there
    assert live.refresh() is False
    assert live.version == "v2" and live.status()["error"]
    assert live.decide(COLUMNS, SCORE, 0.5).rule == [None, None, "budget"]
    live.url = store_url
    live.refresh()
    assert live.status()["error"] is None


def test_without_a_store_the_default_set_applies() -> None:
    live = DecisionRules(None)
    assert live.version == "default-1" and live.refresh(force=True) is False
    assert live.decide(COLUMNS, np.array([0.1, 0.6, 0.99]), 0.5).actions() == [
        "approve", "review", "decline"
    ]  # fmt: skip


def test_the_thread_reads_the_store_again_when_poked_and_stops(store_url: str) -> None:
    """An announcement pokes the worker's thread (refresh_s an hour: not by polling)."""
    import time

    ds.upgrade(store_url)
    live = DecisionRules(store_url, refresh_s=3600)
    live.start()
    with ds.connect(store_url) as conn, conn.begin():
        rule_store.apply(conn, CANDIDATE, "alice")
    assert live.version == "default-1"
    live.poke()
    deadline = time.monotonic() + 10
    while live.version != "v2":
        assert time.monotonic() < deadline, live.status()
        time.sleep(0.05)
    live.stop()
    assert not live.thread.is_alive()
