"""Grafana dashboards as code (grafana-foundation-sdk, Grafana 11.6 line) -> committed JSON.

    python monitoring/grafana/generate.py           # write monitoring/grafana/dashboards/*.json
    python monitoring/grafana/generate.py --check   # exit 1 if the committed JSON is stale

Every query reads a recording rule of ``monitoring/prometheus/rules`` or a ``fraud_`` series,
so the tests can prove each panel returns data from a live Prometheus.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
TAGS = ["fraud-mlops", "generated"]


def query(expr: str, legend: str = "", instant: bool = False) -> Dataquery:
    q = Dataquery().expr(expr).datasource(DATASOURCE)
    if legend:
        q = q.legend_format(legend)
    return q.instant() if instant else q.range()


def series(
    title: str, unit: str, *queries: Dataquery, description: str = "", w: int = 12
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(w)
        .height(8)
        .line_width(1)
        .fill_opacity(10)
    )
    if description:
        panel = panel.description(description)
    for ref, q in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(q.ref_id(ref))
    return panel


def single(title: str, unit: str, q: Dataquery, description: str = "") -> stat.Panel:
    panel = stat.Panel().title(title).unit(unit).datasource(DATASOURCE).span(6).height(4)
    if description:
        panel = panel.description(description)
    return panel.with_target(q.ref_id("A"))


def board(uid: str, title: str, description: str) -> Dashboard:
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .editable()
    )


def overview() -> Dashboard:
    return (
        board(
            "fraud-overview",
            "Fraud API - overview",
            "Volume, fraud rate, decisions, latency, errors and adaptive batching of the API.",
        )
        .with_row(Row("Now"))
        .with_panel(
            single("Transactions / s", "reqps", query("fraud:transactions:rate5m", instant=True))
        )
        .with_panel(
            single(
                "Flagged share",
                "percentunit",
                query("fraud:flagged:ratio_rate5m", instant=True),
                "Share of scored transactions above the model's threshold (5 min).",
            )
        )
        .with_panel(
            single(
                "/predict p99",
                "s",
                query('fraud:request_latency_seconds:p99_5m{endpoint="/predict"}', instant=True),
            )
        )
        .with_panel(
            single(
                "Server errors",
                "percentunit",
                query("fraud:server_errors:ratio_rate5m", instant=True),
                "503 (overloaded) and other 5xx per request; alert above 1 %.",
            )
        )
        .with_row(Row("Traffic and decisions"))
        .with_panel(
            series(
                "Requests / s by endpoint",
                "reqps",
                query("fraud:requests:rate5m", "{{endpoint}}"),
            )
        )
        .with_panel(
            series(
                "Decisions / s",
                "reqps",
                query("fraud:decisions:rate5m", "{{decision}}"),
            )
        )
        .with_panel(
            series(
                "Flagged share vs 7-day baseline",
                "percentunit",
                query("fraud:flagged:ratio_rate5m", "flagged share (5 min)"),
                query("fraud:flagged:ratio_avg7d", "7-day baseline"),
                query("3 * fraud:flagged:ratio_avg7d", "alert level (3x baseline)"),
                description="FraudRateSpike fires when the share stays above 3x its baseline.",
            )
        )
        .with_panel(
            series(
                "Errors / s by kind",
                "reqps",
                query("fraud:errors:rate5m", "{{endpoint}} {{kind}}"),
                description="validation (400), unsupported_media (415), overloaded (503), ...",
            )
        )
        .with_row(Row("Decision rules"))
        .with_panel(
            series(
                "Actions / s",
                "reqps",
                query("fraud:actions:rate5m", "{{action}}"),
                description="What /predict answered: approve, review (the analysts' queue) or "
                "decline, after the rule set in force (docs/rules.md).",
            )
        )
        .with_panel(
            series(
                "Decisions / s by rule",
                "reqps",
                query("fraud:rule_decisions:rate5m", "{{rule}} ({{action}})"),
                description="The rule that decided each transaction; none: no rule matched.",
            )
        )
        .with_row(Row("Latency and batching"))
        .with_panel(
            series(
                "/predict latency",
                "s",
                query('fraud:request_latency_seconds:p50_5m{endpoint="/predict"}', "p50"),
                query('fraud:request_latency_seconds:p95_5m{endpoint="/predict"}', "p95"),
                query('fraud:request_latency_seconds:p99_5m{endpoint="/predict"}', "p99"),
            )
        )
        .with_panel(
            series(
                "Adaptive batch",
                "short",
                query("fraud:batch_size:mean5m", "transactions per batch (mean)"),
                description="Requests BentoML merged into one scoring call.",
            )
        )
        .with_panel(
            series(
                "Scoring time per batch (p99)",
                "s",
                query("fraud:scoring_batch_seconds:p99_5m", "features + model, p99"),
            )
        )
        .with_panel(series("Scrape targets up", "short", query("up", "{{job}} {{instance}}")))
        .with_row(Row("State store and refusals"))
        .with_panel(
            series(
                "Online state store",
                "short",
                query("min(fraud_state_store_up)", "usable (0: unreachable or re-warming)"),
                query("max(fraud_state_rewarming)", "re-warming after it came back empty"),
                query("sum(increase(fraud_state_rewarms_total[1h]))", "re-warms in the past hour"),
                description="FraudStateStoreDown fires when it stays unusable; "
                "FraudStateRewarmed when it came back empty (docs/security.md).",
            )
        )
        .with_panel(
            series(
                "Refused or degraded / s",
                "reqps",
                query(
                    'sum(rate(fraud_errors_total{kind=~"unauthenticated|forbidden|rate_limited"}'
                    "[5m])) or vector(0)",
                    "refused: no key, wrong scope or over its limit",
                ),
                query(
                    "sum by (outcome) (rate(fraud_degraded_transactions_total[5m]))"
                    ' or label_replace(vector(0), "outcome", "none", "", "")',
                    "state store unavailable: {{outcome}}",
                ),
                description="401/403/429 per second, and transactions met while the state "
                "store was unavailable (rejected: 503; fallback: scored without history).",
            )
        )
        .with_panel(
            series(
                "Decision log",
                "short",
                query(
                    "sum(rate(fraud_decision_log_stored_total[5m])) by (kind)", "stored/s: {{kind}}"
                ),
                query("sum(fraud_decision_log_backlog_bytes) / 1024", "backlog (KiB)"),
                query("max(fraud_decision_log_last_ship_age_seconds)", "since last delivery (s)"),
                description="Decisions and labels delivered to the decision store, and what "
                "waits in the journals (FraudDecisionLogBehind after 2 minutes without delivery).",
            )
        )
    )


def model() -> Dashboard:
    return (
        board(
            "fraud-model",
            "Fraud model - scores, drift, live performance",
            "The served model: score distribution, feature drift against its training "
            "reference, precision and recall from feedback labels, version over time.",
        )
        .with_row(Row("Served model"))
        .with_panel(
            table.Panel()
            .title("Served model")
            .datasource(DATASOURCE)
            .span(12)
            .height(4)
            .with_target(
                query("fraud_model_info", instant=True).format(PromQueryFormat.TABLE).ref_id("A")
            )
        )
        .with_panel(
            single(
                "Max feature drift (PSI)",
                "none",
                query("fraud:feature_drift_psi:max", instant=True),
                "0.1-0.25 moderate, above 0.25 significant (FeatureDriftHigh).",
            )
        )
        .with_panel(
            single("Live precision (1 d)", "percentunit", query("fraud:live_precision:ratio_1d"))
        )
        .with_row(Row("Scores and drift"))
        .with_panel(
            series(
                "Fraud score quantiles",
                "none",
                query("fraud:score:p50_5m", "p50"),
                query("fraud:score:p95_5m", "p95"),
            )
        )
        .with_panel(
            series(
                "Score distribution (scored / s per bucket)",
                "reqps",
                query("sum by (le) (rate(fraud_score_bucket[5m]))", "le {{le}}"),
            )
        )
        .with_panel(
            series(
                "Feature drift (PSI) per feature",
                "none",
                query("fraud_feature_drift_psi", "{{feature}}"),
                description="Recent scored traffic against the model's training reference.",
                w=24,
            )
        )
        .with_row(Row("Live performance from feedback"))
        .with_panel(
            series(
                "Live precision and recall (1 d)",
                "percentunit",
                query("fraud:live_precision:ratio_1d", "precision"),
                query("fraud:live_recall:ratio_1d", "recall"),
                description="Decisions whose label (chargeback or review) arrived.",
            )
        )
        .with_panel(
            series(
                "Labelled decisions (1 d)",
                "short",
                query(
                    "sum by (outcome) (increase(fraud_labelled_decisions_total[1d]))",
                    "{{outcome}}",
                ),
            )
        )
        .with_panel(
            series("Feedback labels / s", "reqps", query("fraud:labels:rate1h", "{{outcome}}"))
        )
        .with_panel(
            series(
                "Model version over time",
                "short",
                query("fraud_model_info", "v{{version}} ({{alias}})"),
            )
        )
        .with_panel(
            series(
                "Online feature state",
                "short",
                query("fraud_feature_state_entries", "{{kind}}"),
            )
        )
        .with_row(Row("Live challenger (shadow or canary)"))
        .with_panel(
            series(
                "Challenger",
                "short",
                query("fraud_challenger_info", "v{{version}} {{mode}} {{share}}"),
                description="1 while it takes part; 0 once stopped or rolled back "
                "(FRAUD_CHALLENGER_MODE, /admin/challenger).",
            )
        )
        .with_panel(
            series(
                "Decision agreement with the champion",
                "reqps",
                query(
                    "sum by (outcome) (rate(fraud_challenger_agreement_total[5m]))",
                    "{{outcome}}",
                ),
                description="Transactions both models scored: both flag, neither, or one only.",
            )
        )
        .with_panel(
            series(
                "Live precision per model (1 h)",
                "percentunit",
                query(
                    'sum by (role) (increase(fraud_challenger_labels_total{outcome="tp"}[1h]))'
                    " / sum by (role) "
                    '(increase(fraud_challenger_labels_total{outcome=~"tp|fp"}[1h]))',
                    "{{role}}",
                ),
                description="Labelled transactions both models scored, each model's own "
                "decisions; the retraining DAG's performance check proposes a promotion on "
                "the same labels from the decision log.",
            )
        )
        .with_panel(
            series(
                "Score quantiles per model",
                "none",
                query(
                    "histogram_quantile(0.5, sum by (le, role) "
                    "(rate(fraud_model_score_bucket[5m])))",
                    "p50 {{role}}",
                ),
                query(
                    "histogram_quantile(0.95, sum by (le, role) "
                    "(rate(fraud_model_score_bucket[5m])))",
                    "p95 {{role}}",
                ),
            )
        )
        .with_panel(
            series(
                "Answers per arm",
                "reqps",
                query("sum by (arm) (rate(fraud_arm_transactions_total[5m]))", "{{arm}}"),
                description="canary: the customers the challenger answers (it rolls back by "
                "itself on errors, model time or live precision: fraud_canary_rollbacks_total).",
            )
        )
        .with_panel(
            series(
                "Canary roll-backs",
                "short",
                query("sum(fraud_canary_rollbacks_total)", "roll-backs"),
            )
        )
    )


def pipeline() -> Dashboard:
    return (
        board(
            "fraud-pipeline",
            "Fraud retraining pipeline",
            "What the daily retraining delivered: model age, hold-out quality of the served "
            "version, roll-outs and the drift that can trigger a retrain.",
        )
        .with_row(Row("Served champion"))
        .with_panel(
            single(
                "Model age",
                "s",
                query("fraud:model_age_seconds", instant=True),
                "FraudModelStale fires above 3 days (retraining is daily).",
            )
        )
        .with_panel(
            single("Decision threshold", "none", query("fraud_model_threshold", instant=True))
        )
        .with_panel(
            single(
                "Roll-outs (7 d)",
                "short",
                query("changes(fraud_model_trained_timestamp_seconds[7d])", instant=True),
                "New model versions that reached the API in the last 7 days.",
            )
        )
        .with_panel(
            single(
                "Hold-out AP at training",
                "none",
                query('fraud_model_holdout_metric{metric="ap"}', instant=True),
            )
        )
        .with_row(Row("History"))
        .with_panel(
            series(
                "Hold-out metrics of the served version",
                "none",
                query("fraud_model_holdout_metric", "{{metric}}"),
            )
        )
        .with_panel(series("Model age", "s", query("fraud:model_age_seconds", "age")))
        .with_panel(
            series(
                "Served version",
                "short",
                query("fraud_model_info", "v{{version}} trained {{trained_at}}"),
            )
        )
        .with_panel(
            series(
                "Max feature drift vs retrain level",
                "none",
                query("fraud:feature_drift_psi:max", "max PSI"),
                query("vector(0.25)", "significant (0.25)"),
            )
        )
    )


DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "fraud-overview.json": overview,
    "fraud-model.json": model,
    "fraud-pipeline.json": pipeline,
}


def build(make: Callable[[], Dashboard]) -> Any:
    """The dashboard model with unique panel ids (rows included), as Grafana expects."""
    model = make().build()
    for i, panel in enumerate(model.panels or [], start=1):
        panel.id_val = i
    return model


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        name: json.dumps(build(make), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        for name, make in DASHBOARDS.items()
    }


def panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every panel target of a dashboard JSON."""
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets") or []:
            yield panel.get("title", ""), target["expr"]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale dashboards (run `make dashboards`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
