"""Request and response models of the fraud API (validation names the offending field)."""

from __future__ import annotations

import contextvars
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from serving import clock
from serving.online_features import TxRecord

MAX_AMOUNT = 1_000_000.0
# The API key's name for the request being handled (set by serving.auth in the request's task;
# a transaction keeps it through adaptive batching for the decision log).
API_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar("api_key", default=None)
_MS = timedelta(milliseconds=1)
Identifier = (
    Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    | Annotated[int, Field(ge=0, le=2**63 - 1)]
)


_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=UTC)


def epoch_ms(ts: datetime) -> int:
    """Milliseconds since the epoch; naive datetimes are taken as UTC."""
    return (ts - (_EPOCH if ts.utcoffset() is None else _EPOCH_UTC)) // _MS


class Transaction(BaseModel):
    """One payment to score. Ids may be strings or integers; event time is ``tx_datetime``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "transaction_id": "tx-000001",
                "tx_datetime": "2018-07-31T12:03:27Z",
                "customer_id": "42",
                "terminal_id": "3156",
                "tx_amount": 57.16,
                "tx_channel": "card_present",
                "merchant_category": "grocery",
            }
        },
    )

    transaction_id: Identifier
    tx_datetime: datetime = Field(description="ISO 8601; naive times are taken as UTC")
    customer_id: Identifier
    terminal_id: Identifier
    tx_amount: float = Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)
    tx_channel: Literal["card_present", "card_not_present"] | None = None
    merchant_category: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)] | None
    ) = None

    _api_key: str | None = PrivateAttr(default_factory=lambda: API_KEY.get())

    @property
    def api_key(self) -> str | None:
        """The name of the key that sent it (None without keys)."""
        return self._api_key

    @field_validator("tx_datetime")
    @classmethod
    def _inside_the_service_clock(cls, value: datetime, info: ValidationInfo) -> datetime:
        """Refuse a time outside the service clock's window (a 400 naming ``tx_datetime``);
        ``context={"any_time": True}`` skips it (the built-in sample of /test)."""
        if not (info.context and info.context.get("any_time")):
            clock.check(epoch_ms(value))
        return value

    def to_record(self) -> TxRecord:
        return TxRecord(
            transaction_id=str(self.transaction_id),
            customer_id=str(self.customer_id),
            terminal_id=str(self.terminal_id),
            time_ms=epoch_ms(self.tx_datetime),
            amount_cents=round(self.tx_amount * 100),  # half to even, like np.rint in to_cents
            channel=self.tx_channel or "unknown",
            merchant_category=self.merchant_category or "unknown",
        )


def unique_ids(items: list[Any]) -> list[Any]:
    """A request's items with distinct ``transaction_id`` (``1`` and ``"1"`` are the same id);
    ValueError naming the repeated ones otherwise."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for item in items:
        key = str(item.transaction_id)
        (repeated if key in seen else seen).add(key)
    if repeated:
        shown = sorted(repeated)[:10]
        raise ValueError(f"transaction_id repeated within one request: {shown}")
    return items


class Prediction(BaseModel):
    transaction_id: str
    fraud_probability: float
    is_fraud: bool = Field(
        description="The score at or above the model's threshold (kept for compatibility: "
        "`action` is the decision)"
    )
    model_version: str
    action: Literal["approve", "review", "decline"] = Field(
        "approve",
        description="The decision: the first matching rule of the rule set in force "
        "(approve when none matches); docs/rules.md",
    )
    rule: str | None = Field(None, description="The rule that decided it (None: none matched)")
    arm: Literal["champion", "canary"] = Field(
        "champion",
        description="Which model answered: the champion, or the canary challenger (a share "
        "of customers while a canary runs)",
    )
    degraded: bool = Field(
        False,
        description="Scored without the customer's and terminal's history: the state store "
        "was unavailable (FRAUD_STATE_FAILURE=fallback)",
    )


def predictions(
    records: list[Any],
    proba: Any,
    flagged: Any,
    versions: list[str],
    decided: Any,
    arms: list[str],
    degraded: bool,
) -> list[Any]:
    """A scored batch's answers as dicts (BentoML validates them into :class:`Prediction`;
    pydantic-core does that ~3.5x faster than ``model_construct`` builds them in Python)."""
    return [
        {"transaction_id": r.transaction_id, "fraud_probability": p, "is_fraud": f,
         "model_version": v, "action": action, "rule": rule, "arm": a, "degraded": degraded}
        for r, p, f, v, action, rule, a in zip(
            records, proba.tolist(), flagged.tolist(), versions, decided.actions(),
            decided.rule, arms, strict=True,
        )
    ]  # fmt: skip


class Label(BaseModel):
    """A confirmed outcome for a transaction the service scored."""

    model_config = ConfigDict(extra="forbid")
    transaction_id: Identifier
    is_fraud: bool


class LabelledTransaction(Transaction):
    """A full transaction record with its outcome, for transactions the service never saw."""

    is_fraud: bool


FEEDBACK_MAX = 10_000  # labels or labelled transactions a /feedback request
Labels = Annotated[list[Label], Field(max_length=FEEDBACK_MAX), AfterValidator(unique_ids)]
LabelledTransactions = Annotated[
    list[LabelledTransaction], Field(max_length=FEEDBACK_MAX), AfterValidator(unique_ids)
]


class FeedbackResult(BaseModel):
    applied: int
    ingested: int
    unknown_transaction_ids: list[str]
    message: str
    model_version: str


EXPLAIN_MAX = 100  # transactions a POST /explain request (~3 ms each for a 100-tree forest)


class Reason(BaseModel):
    feature: str = Field(description="The model's feature column")
    value: float | str = Field(description="Its value in the vector the model scored")
    contribution: float = Field(description="Exact tree SHAP value, in probability units")
    direction: Literal["raises", "lowers", "none"]
    reason: str = Field(examples=["amount 5.1x the customer's 30-day average"])


class Explanation(BaseModel):
    transaction_id: str
    fraud_probability: float = Field(description="The score as /predict answers it")
    is_fraud: bool
    model_version: str
    threshold: float
    base_value: float = Field(description="The forest's mean prediction over its training rows")
    model_output: float = Field(
        description="base_value plus every feature's contribution: the output of the "
        "scikit-learn pipeline of record (the served score is its compiled twin's, within 1e-5)"
    )
    output_space: Literal["probability", "log_odds"] = Field(
        description="What the contributions add up to: the probability (a random forest), or "
        "its log-odds (boosted trees: fraud_probability = 1 / (1 + exp(-model_output)))"
    )
    recorded: bool = Field(
        description="True: a logged decision (GET /explain/{id}); false: scored for this "
        "explanation only, nothing recorded"
    )
    degraded: bool
    reasons: list[Reason] = Field(description="The largest contributions first, either sign")


class ChallengerRequest(BaseModel):
    """A live challenger: a Bento-store version beside the champion, in shadow or canary."""

    mode: Literal["off", "shadow", "canary"] = Field(examples=["canary"])
    version: str | None = Field(
        None, max_length=64, description="default: the newest imported as challenger"
    )
    share: float | None = Field(  # ge, not gt: OpenAPI 3.0 has no numeric exclusiveMinimum
        None,
        ge=0.001,
        le=1,
        description="batches (shadow) or customers (canary); default: settings",
    )


class ReloadRequest(BaseModel):
    """Which imported model to serve: an MLflow version in the Bento store (default: latest)."""

    version: str | None = Field(None, max_length=64, examples=["7"])
