"""Monitoring as code, checked offline: Prometheus config and rules, rule unit tests,
Alertmanager routing, Grafana provisioning and the generated dashboards."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from .observability import (
    ALERTMANAGER_CONFIG,
    MONITORING,
    PROJECT,
    RULES,
    binary,
    compress,
    dashboard_generator,
)

PROM = MONITORING / "prometheus"
GRAFANA = MONITORING / "grafana"
generate = dashboard_generator()


def run(*cmd: str) -> str:
    """stdout (+ stderr) of a command that must succeed."""
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def receiver_for(*labels: str) -> str:
    cmd = [binary("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}"]
    out = subprocess.run([*cmd, *labels], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_prometheus_config_and_rules_are_valid() -> None:
    assert "SUCCESS" in run(binary("promtool"), "check", "config", str(PROM / "prometheus.yml"))
    assert "SUCCESS" in run(binary("promtool"), "check", "rules", *map(str, RULES))


def test_every_alert_rule_has_a_firing_and_a_silent_unit_test() -> None:
    tests_file = PROM / "tests" / "fraud-alerts.test.yml"
    out = run(binary("promtool"), "test", "rules", str(tests_file))
    assert "SUCCESS" in out
    alerts = {
        rule["alert"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    cases = [
        case
        for test in yaml.safe_load(tests_file.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    silent = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert alerts == firing == silent, (alerts, firing, silent)


def test_alert_rules_carry_severity_service_and_text() -> None:
    alerts = [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    assert len(alerts) >= 10, f"only {len(alerts)} alert rules found in {RULES}"
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["labels"]["service"], rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_compress_divides_ranges_offsets_and_for_durations_only() -> None:
    text = "expr: rate(x[5m]) > 3 * avg_over_time(y[7d] offset 30m)\nfor: 10m\nlimit: 250ms"
    assert compress(text, 60) == (
        "expr: rate(x[5s]) > 3 * avg_over_time(y[10080s] offset 30s)\nfor: 10s\nlimit: 250ms"
    )


def test_alertmanager_config_is_valid_and_routes_by_severity() -> None:
    assert "SUCCESS" in run(binary("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    assert receiver_for("severity=critical", "service=fraud-api") == "slack-and-email"
    assert receiver_for("severity=warning", "service=fraud-api") == "slack"
    text = ALERTMANAGER_CONFIG.read_text()
    assert "api_url_file" in text and "hooks.slack.com" not in text  # secrets stay out of git


def test_target_down_inhibits_no_traffic() -> None:
    cfg = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    down = ['alertname="FraudApiTargetDown"']
    rule = next(r for r in cfg["inhibit_rules"] if r["source_matchers"] == down)
    assert "FraudNoTraffic" in rule["target_matchers"][0] and rule["equal"] == ["service"]


def test_committed_dashboards_match_the_generator() -> None:
    rendered = generate.render()
    for name, text in rendered.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, (
            f"{name} is stale: run `make dashboards`"
        )
    assert sorted(rendered) == sorted(p.name for p in (GRAFANA / "dashboards").glob("*.json"))
    assert subprocess.run([sys.executable, str(GRAFANA / "generate.py"), "--check"]).returncode == 0


@pytest.mark.parametrize("name", sorted(generate.DASHBOARDS))
def test_dashboard_round_trips_through_the_sdk_model(name: str) -> None:
    from grafana_foundation_sdk.models.dashboard import Dashboard

    raw = json.loads((GRAFANA / "dashboards" / name).read_text())
    model = Dashboard.from_json(raw)
    again = json.loads(json.dumps(model, cls=generate.JSONEncoder))
    assert again == raw
    ids = [p["id"] for p in raw["panels"]]
    assert len(ids) == len(set(ids)) and raw["uid"] and raw["title"]
    queries = list(generate.panel_queries(raw))
    assert len(queries) >= 8
    for panel in raw["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "prometheus"
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)) and all(refs), panel["title"]


def test_provisioning_points_at_the_dashboards_and_datasource() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    assert [d["uid"] for d in ds["datasources"]] == ["prometheus"]
    assert ds["datasources"][0]["type"] == "prometheus"
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/fraud.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
