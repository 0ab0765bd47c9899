"""Decision rules beside the model: a declarative, versioned rule set (YAML or JSON, validated by
pydantic) that turns each scored transaction into an action (approve, review or decline) and
names the rule that decided it. Serving and the backtest evaluate the same set the same way:
per batch, one boolean mask per rule over the whole batch.

Rules read the transaction's fields (``tx_amount``, ``tx_channel``, ``merchant_category``,
``customer_id``, ``terminal_id``), the computed features (their names, e.g.
``CUSTOMER_ID_NB_TX_1DAY_WINDOW``) and the model's ``score``. Kinds:

- ``list``: the customer or the terminal is on a managed list (``fraudops lists``);
- ``compare``: a field against a value;
- ``velocity``: the customer's count or sum of amounts over 1, 7 or 30 days, this transaction
  included (the windows the online state keeps; a terminal's windows are delayed by the label
  delay in the features, so they are no velocity);
- ``score``: a band of the model's score, ``threshold`` standing for the model's own.

**Order.** The first matching rule wins: first every allow list (a list rule whose action is
approve: a trusted customer or terminal is not stopped by a later rule), then every other rule in
the file's order. A transaction no rule matches is approved.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

ACTIONS = ("approve", "review", "decline")
APPROVE, REVIEW, DECLINE = range(3)
NO_RULE = -1  # the index of "no rule matched" (approved)
SCORE = "score"
TX_FIELDS = ("tx_amount", "tx_channel", "merchant_category", "customer_id", "terminal_id")
Action = Literal["approve", "review", "decline"]
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class RuleSetError(ValueError):
    """A rule set that cannot be applied; the message names the line and the field."""


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    action: Action
    description: str = ""


class ListRule(_Rule):
    """The transaction's customer or terminal is on the managed list ``list``."""

    kind: Literal["list"]
    entity: Literal["customer", "terminal"]
    list: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class CompareRule(_Rule):
    """``field op value``: a transaction field, a feature or the score against a value."""

    kind: Literal["compare"]
    field: str
    op: Literal[">", ">=", "<", "<=", "==", "!="]
    value: float | str

    @model_validator(mode="after")
    def _text_compares_for_equality_only(self) -> CompareRule:
        if isinstance(self.value, str) and self.op not in ("==", "!="):
            raise ValueError(f"a text value compares with == or != only, not {self.op}")
        return self


class VelocityRule(_Rule):
    """The customer's count (or sum of amounts) over ``window_days``, this transaction in."""

    kind: Literal["velocity"]
    entity: Literal["customer"] = "customer"
    window_days: Literal[1, 7, 30]
    measure: Literal["count", "sum"]
    op: Literal[">", ">="] = ">"
    value: float = Field(ge=0)

    def column(self) -> str:
        return f"CUSTOMER_ID_NB_TX_{self.window_days}DAY_WINDOW"

    def average_column(self) -> str:
        """The customer's average amount over the window (a sum is the count times it)."""
        return f"CUSTOMER_ID_AVG_AMOUNT_{self.window_days}DAY_WINDOW"


class ScoreBand(_Rule):
    """``min <= score < max``; ``min: threshold`` is the served model's threshold."""

    kind: Literal["score"]
    min: float | Literal["threshold"] = 0.0
    max: float | None = None

    @model_validator(mode="after")
    def _a_band(self) -> ScoreBand:
        if isinstance(self.min, float) and self.max is not None and self.min >= self.max:
            raise ValueError(f"an empty band: min {self.min} is not below max {self.max}")
        return self


Rule = Annotated[ListRule | CompareRule | VelocityRule | ScoreBand, Field(discriminator="kind")]


class RuleSet(BaseModel):
    """A versioned rule set; :func:`parse` reads one from YAML or JSON text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1, max_length=64)
    rules: list[Rule] = Field(max_length=500)
    _plan: Plan | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _distinct_names(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return self

    def __eq__(self, other: object) -> bool:  # the fields, not the cached plan
        if not isinstance(other, RuleSet):
            return NotImplemented
        return self.version == other.version and self.rules == other.rules

    __hash__ = None  # type: ignore[assignment]

    def plan(self) -> Plan:
        """The set made ready to evaluate, once (the set is immutable)."""
        private: dict[str, Any] = self.__pydantic_private__ or {}  # ~50x faster than _plan
        plan: Plan | None = private.get("_plan")
        if plan is None:
            plan = self._plan = _plan(self)
        return plan

    def ordered(self) -> list[Rule]:
        """Evaluation order: allow lists first, then the rest as written."""
        allow = [r for r in self.rules if isinstance(r, ListRule) and r.action == "approve"]
        return allow + [r for r in self.rules if r not in allow]

    def check_fields(self, known: set[str]) -> None:
        """RuleSetError naming a compare rule's field that is not a transaction field, a
        feature or the score."""
        for rule in self.rules:
            if isinstance(rule, CompareRule) and rule.field not in known | {SCORE, *TX_FIELDS}:
                raise RuleSetError(
                    f"rule {rule.name!r}: field {rule.field!r} is not a transaction field, a "
                    f"feature or the score (known: {', '.join(sorted(TX_FIELDS))}, score, and "
                    "the feature names)"
                )


def default() -> RuleSet:
    """The set a service starts with: the review budget's threshold sends to review, a high
    score band declines (the model's threshold is set for ``FRAUD_REVIEW_BUDGET_PER_DAY``)."""
    return RuleSet(
        version="default-1",
        rules=[
            ListRule(kind="list", name="allow-customers", action="approve", entity="customer",
                     list="allowed_customers"),
            ListRule(kind="list", name="allow-terminals", action="approve", entity="terminal",
                     list="allowed_terminals"),
            ListRule(kind="list", name="block-customers", action="decline", entity="customer",
                     list="blocked_customers"),
            ListRule(kind="list", name="block-terminals", action="decline", entity="terminal",
                     list="blocked_terminals"),
            ScoreBand(kind="score", name="high-score", action="decline", min=0.9),
            ScoreBand(kind="score", name="review-budget", action="review", min="threshold"),
        ],
    )  # fmt: skip


def _line_of(node: yaml.Node, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (a pydantic error location), or of its
    nearest parent."""
    line = node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(key, str):
            match = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            match = node.value[key] if key < len(node.value) else None
        else:
            match = None
        if match is None:
            break
        node, line = match, match.start_mark.line + 1
    return line


_KINDS = ("list", "compare", "velocity", "score")  # pydantic's union tags in error locations


def parse(text: str, source: str = "rule set") -> RuleSet:
    """A rule set from YAML or JSON text (JSON is YAML); RuleSetError naming the line and the
    field of the first problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleSetError(f"{source}: not YAML or JSON: {exc}") from exc
    if node is None or not isinstance(data, dict):
        raise RuleSetError(f"{source}: expected a mapping with 'version' and 'rules'")
    seen: dict[str, int] = {}
    for j, item in enumerate(data.get("rules") or []):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name in seen:
            line = _line_of(node, ("rules", j, "name"))
            raise RuleSetError(
                f"{source}, line {line}, field rules.{j}.name: rule name {name!r} is used "
                f"twice (rules.{seen[name]} has it)"
            )
        seen.setdefault(str(name), j)
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _KINDS))
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc += ("kind",)
        field = ".".join(str(p) for p in loc) or "(top)"
        line = _line_of(node, loc)
        raise RuleSetError(f"{source}, line {line}, field {field}: {err['msg']}") from exc


ROW_WISE = 128  # batches this small are read row by row (tests/bench/rules_cost.py)


def evaluate(
    rules: RuleSet,
    columns: Mapping[str, Any],
    score: np.ndarray,
    threshold: float | np.ndarray,
    lists: Mapping[str, frozenset[str]],
) -> tuple[np.ndarray, np.ndarray]:
    """(action, rule index into ``rules.ordered()``; NO_RULE: none matched) for every row of a
    batch. ``columns``: the transaction fields and the features, one array each, the batch
    long; ``threshold``: the model's (one, or one a row: a backtest over model versions);
    ``lists``: the managed lists' members (a missing list is empty).

    A batch is read one rule at a time over the whole batch (one mask a rule); a batch of up
    to :data:`ROW_WISE` rows one row at a time, each stopping at its first match (a mask costs
    a few numpy calls whatever the rows: 50 rules on one transaction would cost 50 times that).
    Both readings give the same answer (tests/test_rules.py)."""
    plan = rules.plan()
    n = len(score)
    if n <= ROW_WISE:  # Python scalars and lists: a few µs for one transaction
        per_row = isinstance(threshold, np.ndarray) and threshold.ndim > 0
        cols = [(k, _as_list(columns[k])) for k in plan.needed]
        scores, limits = score.tolist(), (threshold.tolist() if per_row else None)  # type: ignore[union-attr]
        first, actions = plan.first, plan.actions
        js = [
            first({k: v[i] for k, v in cols}, scores[i],
                  limits[i] if limits is not None else threshold, lists)
            for i in range(n)
        ]  # fmt: skip
        return (
            np.array([actions[j] if j != NO_RULE else APPROVE for j in js], dtype=np.int8),
            np.array(js, dtype=np.int32),
        )
    action = np.full(n, APPROVE, dtype=np.int8)
    fired = np.full(n, NO_RULE, dtype=np.int32)
    open_ = np.ones(n, dtype=bool)
    for j, rule in enumerate(plan.ordered):
        if not open_.any():
            break
        hit = _mask(rule, columns, score, threshold, lists) & open_
        action[hit] = plan.actions[j]
        fired[hit] = j
        open_ &= ~hit
    return action, fired


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Plan:
    """A rule set made ready to evaluate: the order, the action codes, the columns read, and
    one function testing the rules in order on a row (:func:`_first_match`)."""

    ordered: list[Rule]
    actions: list[int]
    needed: list[str]
    first: Callable[[Mapping[str, Any], float, Any, Mapping[str, frozenset[str]]], int]


def _reads(rule: Rule) -> list[str]:
    """The columns a rule reads (the score is not one)."""
    if isinstance(rule, ListRule):
        return [f"{rule.entity}_id"]
    if isinstance(rule, ScoreBand):
        return []
    if isinstance(rule, VelocityRule):
        return [rule.column()] + ([rule.average_column()] if rule.measure == "sum" else [])
    return [] if rule.field == SCORE else [rule.field]


def _plan(rules: RuleSet) -> Plan:
    ordered = rules.ordered()
    needed = list(dict.fromkeys(c for r in ordered for c in _reads(r)))
    return Plan(ordered, [ACTIONS.index(r.action) for r in ordered], needed,
                _first_match(ordered))  # fmt: skip


def _first_match(ordered: list[Rule]) -> Callable[..., int]:
    """One Python function testing the rules in order on a row, returning the index of the
    first that holds (NO_RULE: none), with no call a rule (~3x faster on one transaction than
    a function a rule). Its source holds no text of the set: every name,
    field and value is a constant bound by index (``c0``, ``c1``, ...), every operator one of
    :data:`_OPS`."""
    consts: list[Any] = []

    def c(value: Any) -> str:
        consts.append(value)
        return f"c{len(consts) - 1}"

    body = []
    for j, rule in enumerate(ordered):
        if isinstance(rule, ListRule):
            test = f"row[{c(f'{rule.entity}_id')}] in lists.get({c(rule.list)}, EMPTY)"
        elif isinstance(rule, ScoreBand):
            low = "t" if rule.min == "threshold" else c(float(rule.min))
            test = f"s >= {low}" + (f" and s < {c(rule.max)}" if rule.max is not None else "")
        elif isinstance(rule, VelocityRule):
            count = f"row[{c(rule.column())}]"
            if rule.measure == "sum":
                count = f"{count} * row[{c(rule.average_column())}]"
            test = f"{count} {rule.op} {c(rule.value)}"
        else:
            left = "s" if rule.field == SCORE else f"row[{c(rule.field)}]"
            test = f"{left} {rule.op} {c(rule.value)}"
        assert getattr(rule, "op", ">") in _OPS  # the only text taken from the set
        body.append(f"    if {test}:\n        return {j}\n")
    source = "def first(row, s, t, lists):\n" + "".join(body) + f"    return {NO_RULE}\n"
    namespace: dict[str, Any] = {f"c{i}": v for i, v in enumerate(consts)} | {"EMPTY": _EMPTY}
    exec(compile(source, "<rule set>", "exec"), namespace)
    return namespace["first"]


def _mask(
    rule: Rule,
    columns: Mapping[str, Any],
    score: np.ndarray,
    threshold: float | np.ndarray,
    lists: Mapping[str, frozenset[str]],
) -> np.ndarray:
    if isinstance(rule, ListRule):
        members = lists.get(rule.list, frozenset())
        if not members:
            return np.zeros(len(score), dtype=bool)
        ids = np.asarray(columns[f"{rule.entity}_id"], dtype=object)
        return np.fromiter((i in members for i in ids), dtype=bool, count=len(ids))
    if isinstance(rule, ScoreBand):
        low = np.asarray(threshold, dtype=float) if rule.min == "threshold" else float(rule.min)
        hit = score >= low
        return hit & (score < rule.max) if rule.max is not None else hit
    if isinstance(rule, VelocityRule):
        count = np.asarray(columns[rule.column()], dtype=float)
        if rule.measure == "count":
            measure = count
        else:
            avg = np.asarray(columns[rule.average_column()])
            measure = count * np.asarray(avg, dtype=float)
        return np.asarray(_OPS[rule.op](measure, rule.value), dtype=bool)
    values = score if rule.field == SCORE else np.asarray(columns[rule.field])
    if isinstance(rule.value, str):
        values = np.asarray(values, dtype=object)
    return np.asarray(_OPS[rule.op](values, rule.value), dtype=bool)


def names(rules: RuleSet) -> list[str]:
    """The rules' names in evaluation order (what a rule index points into)."""
    return [r.name for r in rules.ordered()]


def dump(rules: RuleSet) -> str:
    """The set as YAML (what ``parse`` reads back)."""
    return yaml.safe_dump(rules.model_dump(mode="json"), sort_keys=False)
