"""A rule set's backtest on the decision log (SQLite and PostgreSQL stores): hits, precision
and recall against the policy's labels, alerts a day, and the moves from the live set."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from training.core import backtest, rules
from training.core import decision_store as ds

from .test_decision_log import decision_line, label_line, store_lines

DAY_MS = 86_400_000
T0 = int(datetime(2018, 4, 1, tzinfo=UTC).timestamp() * 1000)

CANDIDATE = rules.parse("""
version: candidate-1
rules:
  - {name: block-t9, kind: list, entity: terminal, list: blocked_terminals, action: decline}
  - {name: big, kind: compare, field: tx_amount, op: ">=", value: 500, action: review}
  - {name: burst, kind: velocity, window_days: 1, measure: count, value: 3, action: decline}
  - {name: budget, kind: score, min: threshold, action: review}
""")


def _fill(url: str) -> None:
    """20 days, 5 decisions a day (customer k of the day, terminal t<k>): on each day, k=0
    pays 600 (score 0.1), k=1 is on terminal t9 (score 0.2), k=2 scores 0.8 (threshold 0.5),
    k=3 has 5 transactions in its day (score 0.3), k=4 is plain (0.1). Frauds: every k=1 and
    k=2 of days 0-9 (labelled), nothing else; days 10-19 are younger than the delay and only
    their labelled ones count."""
    lines = []
    for d in range(20):
        for k in range(5):
            tx = f"tx{d}-{k}"
            lines.append(
                decision_line(
                    tx,
                    T0 + d * DAY_MS + k * 3_600_000,
                    customer_id=f"c{d}-{k}",
                    terminal_id="t9" if k == 1 else f"t{k}",
                    amount_cents=60_000 if k == 0 else 1_000,
                    probability=[0.1, 0.2, 0.8, 0.3, 0.1][k],
                    threshold=0.5,
                    features={"CUSTOMER_ID_NB_TX_1DAY_WINDOW": 5 if k == 3 else 1},
                )
            )
            if d < 10 and k in (1, 2):
                lines.append(label_line(f"e{tx}", tx, True, T0 + (d + 1) * DAY_MS))
    store_lines(url, lines)


def test_a_candidate_set_is_measured_against_the_labels_and_the_live_set(store_url: str) -> None:
    _fill(store_url)
    result = backtest.backtest(
        store_url,
        CANDIDATE,
        rules.default(),
        since=datetime(2018, 4, 1, tzinfo=UTC),
        lists={"blocked_terminals": frozenset({"t9"})},
        budget=3,
    )
    # days 0-12 mature by the policy (the clock: day 19's last decision, delay 7), days 13-19
    # only where labelled (none there): 13 days x 5
    assert (result.days, result.transactions, result.frauds) == (13, 65, 20)
    hits = {r.name: (r.hits, r.frauds, r.precision) for r in result.candidate.rules}
    assert hits == {
        "block-t9": (13, 10, 10 / 13),
        "big": (13, 0, 0.0),
        "burst": (13, 0, 0.0),
        "budget": (13, 10, 10 / 13),
    }
    cand = result.candidate
    assert cand.actions == {"approve": 13, "review": 26, "decline": 26}
    assert cand.alerts_per_day == pytest.approx(52 / 13)
    assert cand.precision == pytest.approx(20 / 52) and cand.recall == 1.0
    # the live (default) set: the budget band only (no list holds t9 there: blocked_terminals
    # is given, so its block rule fires too)
    live = result.live
    assert live.actions == {"approve": 39, "review": 13, "decline": 13}
    assert live.recall == 1.0 and live.precision == pytest.approx(20 / 26)
    assert result.changes == {"approve->review": 13, "approve->decline": 13}


def test_a_rule_on_a_field_the_log_lacks_is_refused(store_url: str) -> None:
    _fill(store_url)
    bad = rules.parse(
        "version: x\nrules:\n  - {name: r, kind: compare, field: TERMINAL_RISK, op: '>', "
        "value: 1, action: review}\n"
    )
    with pytest.raises(rules.RuleSetError, match="TERMINAL_RISK"):
        backtest.backtest(store_url, bad, rules.default(), datetime(2018, 4, 1, tzinfo=UTC))


def test_rules_and_lists_through_the_cli(store_url: str, tmp_path) -> None:
    """`fraudops lists` and `fraudops rules` on a store: entries with who and why, a rule set
    checked, backtested on the log, applied once per version, and shown."""
    from typer.testing import CliRunner

    from training.cli import app
    from training.core import rule_store

    _fill(store_url)
    run = CliRunner().invoke
    out = run(app, ["lists", "add", "blocked_terminals", "t9", "t8", "--note", "skimmer, case 41",
                    "--by", "alice", "--db", store_url])  # fmt: skip
    assert out.exit_code == 0 and "2 added" in out.output, out.output
    out = run(app, ["lists", "add", "blocked_terminals", "t9", "--db", store_url])
    assert "0 added, 1 already there" in out.output
    assert (
        run(app, ["lists", "remove", "blocked_terminals", "t8", "--db", store_url]).exit_code == 0
    )
    out = run(app, ["lists", "show", "blocked_terminals", "--db", store_url])
    assert "1 entries" in out.output and "alice" in out.output and "case 41" in out.output

    good = tmp_path / "rules.yaml"
    good.write_text(rules.dump(CANDIDATE))
    bad = tmp_path / "bad.yaml"
    bad.write_text(rules.dump(CANDIDATE).replace("op: '>='", "op: '=>'"))
    out = run(app, ["rules", "check", str(bad)])
    assert out.exit_code == 2 and f"{bad}, line" in out.output and "field rules.1.op" in out.output
    out = run(app, ["rules", "check", str(good)])
    assert out.exit_code == 0 and "block-t9, big, burst, budget" in out.output

    out = run(app, ["rules", "backtest", str(good), "--since", "2018-04-01", "--db", store_url])
    assert out.exit_code == 0, out.output
    said = " ".join(out.output.split())  # rich wraps at the test terminal's width
    assert "65 decisions, 20 frauds" in said and "4.0 alerts a day" in said
    assert "(over the budget)" not in said  # 4 a day against the default 100

    out = run(app, ["rules", "apply", str(good), "--by", "bob", "--db", store_url])
    assert out.exit_code == 0 and "candidate-1 in force" in out.output
    assert "already in force" in run(app, ["rules", "apply", str(good), "--db", store_url]).output
    changed = tmp_path / "changed.yaml"
    changed.write_text(rules.dump(CANDIDATE).replace("value: 500", "value: 700"))
    out = run(app, ["rules", "apply", str(changed), "--db", store_url])
    assert out.exit_code == 2 and "new version" in out.output
    out = run(app, ["rules", "show", "--db", store_url])
    assert "version: candidate-1" in out.output and "by bob" in out.output
    with ds.connect(store_url) as conn:
        assert rule_store.active(conn) == CANDIDATE
        assert rule_store.members(conn) == {"blocked_terminals": frozenset({"t9"})}


def test_applying_an_earlier_version_puts_it_back_in_force(store_url: str) -> None:
    from training.core import rule_store

    engine = ds.engine_for(store_url)
    try:
        with engine.begin() as conn:
            assert rule_store.active(conn) is None
            assert rule_store.apply(conn, rules.default(), "a")
            assert rule_store.apply(conn, CANDIDATE, "b")
            assert rule_store.active(conn) == CANDIDATE
            assert rule_store.apply(conn, rules.default(), "c")
            assert rule_store.active(conn) == rules.default()
            assert [h["version"] for h in rule_store.history(conn)] == [
                "default-1", "candidate-1"
            ]  # fmt: skip
    finally:
        engine.dispose()
