"""The decision rules' definition: parsing with the line and field of a problem named, the
evaluation order (allow lists first, then the file's order), each kind of rule, and the batch
evaluation against a row-by-row reading of the same rules."""

from __future__ import annotations

import numpy as np
import pytest

from training.core import rules

RULES = """\
version: "2026-12-05.1"
rules:
  - name: block-terminals
    kind: list
    entity: terminal
    list: blocked_terminals
    action: decline
  - name: big-online
    kind: compare
    field: tx_amount
    op: ">="
    value: 500
    action: review
  - name: online-only
    kind: compare
    field: tx_channel
    op: "=="
    value: card_not_present
    action: review
  - name: burst
    kind: velocity
    window_days: 1
    measure: count
    value: 5
    action: decline
  - name: spend
    kind: velocity
    window_days: 7
    measure: sum
    op: ">="
    value: 2000
    action: review
  - name: high
    kind: score
    min: 0.9
    action: decline
  - name: budget
    kind: score
    min: threshold
    action: review
  - name: trusted
    kind: list
    entity: customer
    list: allowed_customers
    action: approve
"""


def batch() -> dict[str, np.ndarray]:
    return {
        "customer_id": np.array(["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"], dtype=object),
        "terminal_id": np.array(["t1", "t9", "t2", "t3", "t4", "t5", "t6", "t9"], dtype=object),
        "tx_amount": np.array([10.0, 20.0, 600.0, 30.0, 40.0, 50.0, 60.0, 70.0]),
        "tx_channel": np.array(
            ["card_present"] * 3 + ["card_not_present"] + ["card_present"] * 4, dtype=object
        ),
        "CUSTOMER_ID_NB_TX_1DAY_WINDOW": np.array([1, 1, 1, 1, 9, 1, 1, 1], dtype=float),
        "CUSTOMER_ID_NB_TX_7DAY_WINDOW": np.array([1, 1, 1, 1, 9, 50, 1, 1], dtype=float),
        "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW": np.array([10, 20, 600, 30, 40, 50, 60, 70.0]),
    }


def test_the_first_matching_rule_decides_allow_lists_before_everything() -> None:
    ruleset = rules.parse(RULES)
    score = np.array([0.1, 0.95, 0.2, 0.1, 0.1, 0.1, 0.5, 0.99])
    lists = {"blocked_terminals": frozenset({"t9"}), "allowed_customers": frozenset({"c8"})}
    action, fired = rules.evaluate(ruleset, batch(), score, 0.4, lists)
    names = rules.names(ruleset)
    assert names[0] == "trusted"  # written last, evaluated first
    got = [(rules.ACTIONS[a], names[f] if f != rules.NO_RULE else None)
           for a, f in zip(action, fired, strict=True)]  # fmt: skip
    assert got == [
        ("approve", None),  # nothing matches
        ("decline", "block-terminals"),  # before the score band it also matches
        ("review", "big-online"),  # 600 >= 500
        ("review", "online-only"),
        ("decline", "burst"),  # 9 transactions in a day
        ("review", "spend"),  # 50 x 50 = 2,500 over 7 days
        ("review", "budget"),  # 0.5 >= the model's threshold 0.4
        ("approve", "trusted"),  # allowed, though blocked terminal and score 0.99
    ]


def test_the_default_set_reviews_the_budget_and_declines_a_high_band() -> None:
    ruleset = rules.default()
    score = np.array([0.05, 0.5, 0.95])
    cols = {"customer_id": np.array(["a", "b", "c"], dtype=object),
            "terminal_id": np.array(["x", "y", "z"], dtype=object)}  # fmt: skip
    action, fired = rules.evaluate(ruleset, cols, score, 0.3, {})
    assert [rules.ACTIONS[a] for a in action] == ["approve", "review", "decline"]
    assert fired[0] == rules.NO_RULE
    action, _ = rules.evaluate(ruleset, cols, score, 0.3, {"blocked_customers": frozenset("a")})
    assert rules.ACTIONS[action[0]] == "decline"


@pytest.mark.parametrize(
    ("edit", "line", "field", "says"),
    [
        (("op: \">=\"\n    value: 500", "op: \"~\"\n    value: 500"), 11, "rules.1.op", "Input"),
        (("kind: velocity", "kind: speed"), 21, "rules.3.kind", "tag"),
        (("window_days: 1", "window_days: 2"), 22, "rules.3.window_days", "Input"),
        (("name: spend", "name: burst"), 26, "rules.4.name", "used twice (rules.3 has it)"),
        (("min: 0.9", "min: 0.9\n    max: 0.5"), 33, "rules.5", "empty band"),
        (("value: card_not_present", "value: card_not_present\n    colour: red"), 19,
         "rules.2.colour", "Extra"),
    ],
)  # fmt: skip
def test_a_bad_rule_set_is_refused_with_its_line_and_field(
    edit: tuple[str, str], line: int, field: str, says: str
) -> None:
    text = RULES.replace(*edit, 1)
    with pytest.raises(rules.RuleSetError) as err:
        rules.parse(text, "rules.yaml")
    message = str(err.value)
    assert f"rules.yaml, line {line}, field {field}:" in message, message
    assert says in message, message


def test_a_text_value_compares_for_equality_only_and_fields_must_exist() -> None:
    with pytest.raises(rules.RuleSetError, match=r"line 8, field rules\.1: .*== or !="):
        rules.parse(RULES.replace("value: 500", 'value: "500"', 1))
    ruleset = rules.parse(RULES.replace("field: tx_amount", "field: TX_AMOUNTS", 1))
    with pytest.raises(rules.RuleSetError, match="'TX_AMOUNTS' is not a transaction field"):
        ruleset.check_fields({"CUSTOMER_ID_NB_TX_1DAY_WINDOW"})
    rules.parse(RULES).check_fields(set())  # the real names pass
    with pytest.raises(rules.RuleSetError, match="not YAML"):
        rules.parse("rules: [")


def test_json_and_yaml_read_alike_and_a_set_reads_back_what_it_dumps() -> None:
    import json

    import yaml

    ruleset = rules.parse(RULES)
    assert rules.parse(json.dumps(yaml.safe_load(RULES))) == ruleset
    assert rules.parse(rules.dump(ruleset)) == ruleset
    assert rules.parse(rules.dump(rules.default())) == rules.default()


def test_the_batch_evaluation_is_the_row_by_row_reading_of_the_rules() -> None:
    """On 5,000 random transactions: each row's action and rule are those of the first rule,
    in evaluation order, that a plain reading of it matches."""
    rng = np.random.default_rng(5)
    n = 5_000
    cols = {
        "customer_id": rng.integers(0, 50, n).astype(str).astype(object),
        "terminal_id": rng.integers(0, 50, n).astype(str).astype(object),
        "tx_amount": rng.gamma(2, 150, n),
        "tx_channel": rng.choice(["card_present", "card_not_present"], n).astype(object),
        "CUSTOMER_ID_NB_TX_1DAY_WINDOW": rng.integers(1, 9, n).astype(float),
        "CUSTOMER_ID_NB_TX_7DAY_WINDOW": rng.integers(1, 40, n).astype(float),
        "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW": rng.gamma(2, 50, n),
    }
    score = rng.random(n)
    lists = {"blocked_terminals": frozenset({"3", "7"}), "allowed_customers": frozenset({"4"})}
    ruleset = rules.parse(RULES)
    action, fired = rules.evaluate(ruleset, cols, score, 0.6, lists)

    def matches(rule: rules.Rule, i: int) -> bool:
        row = {k: v[i] for k, v in cols.items()}
        if isinstance(rule, rules.ListRule):
            return row[f"{rule.entity}_id"] in lists.get(rule.list, ())
        if isinstance(rule, rules.ScoreBand):
            low = 0.6 if rule.min == "threshold" else rule.min
            return score[i] >= low and (rule.max is None or score[i] < rule.max)
        if isinstance(rule, rules.VelocityRule):
            count = row[rule.column()]
            amount = count * row.get(f"CUSTOMER_ID_AVG_AMOUNT_{rule.window_days}DAY_WINDOW", 0)
            measure = count if rule.measure == "count" else amount
            return measure > rule.value if rule.op == ">" else measure >= rule.value
        assert isinstance(rule, rules.CompareRule)
        value = score[i] if rule.field == "score" else row[rule.field]
        return bool({">": value > rule.value, ">=": value >= rule.value,
                     "==": value == rule.value}[rule.op])  # fmt: skip

    ordered = ruleset.ordered()
    for i in range(n):
        first = next((j for j, r in enumerate(ordered) if matches(r, i)), rules.NO_RULE)
        assert fired[i] == first, i
        expect = rules.ACTIONS.index(ordered[first].action) if first != rules.NO_RULE else 0
        assert action[i] == expect, i
    assert len(set(fired.tolist())) == len(ordered) + 1  # every rule and "none" happened
    # small batches are read row by row: the same answers, batch by batch of 1 to ROW_WISE rows
    start = 0
    for size in [1, 2, 5, 20, 3, 11, rules.ROW_WISE, 64] * 20:
        part = slice(start, start + size)
        a, f = rules.evaluate(ruleset, {k: v[part] for k, v in cols.items()}, score[part], 0.6,
                              lists)  # fmt: skip
        assert (a == action[part]).all() and (f == fired[part]).all(), (start, size)
        start += size
