"""Pipeline notifications: a Slack-compatible webhook and email over SMTP.

Configured by settings (``FRAUD_NOTIFY_*``) or, in Airflow, by connections that override them
(see ``dags/fraud_common.py``). A channel that is not configured is skipped with a log line; a
configured channel that fails raises, so the task retries.
"""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from training.core.config import Settings, comma_list

log = logging.getLogger(__name__)


@dataclass
class Channels:
    webhook_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password: str | None = None
    email_from: str = "fraud-mlops@localhost"
    email_to: list[str] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Settings) -> Channels:
        password = settings.notify_smtp_password
        return cls(
            webhook_url=settings.notify_webhook_url,
            smtp_host=settings.notify_smtp_host,
            smtp_port=settings.notify_smtp_port,
            smtp_starttls=settings.notify_smtp_starttls,
            smtp_user=settings.notify_smtp_user,
            smtp_password=password.get_secret_value() if password else None,
            email_from=settings.notify_email_from,
            email_to=comma_list(settings.notify_email_to),
        )


def send(channels: Channels, subject: str, text: str) -> list[str]:
    """Deliver to every configured channel; returns the channels used."""
    sent = []
    if channels.webhook_url:
        body = json.dumps({"text": f"*{subject}*\n{text}"}).encode()
        req = urllib.request.Request(
            channels.webhook_url,
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=15) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"webhook answered {resp.status}")
        sent.append("webhook")
    else:
        log.info("no webhook configured (FRAUD_NOTIFY_WEBHOOK_URL): skipped")
    if channels.smtp_host and channels.email_to:
        msg = EmailMessage()
        msg["Subject"], msg["From"], msg["To"] = subject, channels.email_from, channels.email_to
        msg.set_content(text)
        with smtplib.SMTP(channels.smtp_host, channels.smtp_port, timeout=15) as smtp:
            if channels.smtp_starttls:
                smtp.starttls()
            if channels.smtp_user and channels.smtp_password:
                smtp.login(channels.smtp_user, channels.smtp_password)
            smtp.send_message(msg)
        sent.append("email")
    else:
        log.info("no SMTP host or recipients configured (FRAUD_NOTIFY_SMTP_*): email skipped")
    return sent


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


STAGES = ("performance_check", "data_prep", "training", "deployment")


def summary(report: dict[str, dict[str, Any] | None], run_id: str) -> tuple[str, str]:
    """Subject and text of the run's notification: metrics, decision, versions, reason."""
    failed = [s for s in STAGES if report.get(s) is None]
    health = report.get("performance_check") or {}
    prepared = report.get("data_prep") or {}
    cand = report.get("training") or {}
    dep = report.get("deployment") or {}
    lines = [f"Run {run_id}"]
    if health:
        lines.append(
            f"Champion v{health.get('champion_version')} on {health.get('window')}: "
            f"precision {_num(health.get('precision'))}, recall {_num(health.get('recall'))}, "
            f"AP {_num(health.get('ap'))}, max PSI {_num(health.get('max_psi'))}. "
            f"Retrain because: {'; '.join(health.get('reasons', []))}."
        )
    if prepared:
        lines.append(
            f"Data: {prepared.get('transactions', 0):,} transactions over {prepared.get('days')} "
            f"days ({prepared.get('first_day')}..{prepared.get('last_day')})"
            + (f", new days {', '.join(prepared['appended'])}" if prepared.get("appended") else "")
        )
    if cand:
        m = cand.get("test_metrics", {})
        lines.append(
            f"Candidate v{cand.get('version')}: hold-out AUC {_num(m.get('auc'))}, "
            f"AP {_num(m.get('ap'))}, CP@100 {_num(m.get('cp100'))}"
        )
    if dep:
        verdict = "promoted to champion" if dep.get("promoted") else "kept as challenger"
        lines.append(
            f"Decision: v{dep.get('version')} {verdict} (previous champion "
            f"v{dep.get('previous_champion')}). Reason: {dep.get('reason')}"
        )
    if failed:
        lines.append(f"FAILED: no result from {', '.join(failed)} (see the Airflow task logs)")
        subject = f"[fraud-mlops] retraining FAILED at {failed[0]}"
    elif dep.get("promoted"):
        subject = f"[fraud-mlops] v{dep.get('version')} promoted to champion"
    else:
        subject = f"[fraud-mlops] v{dep.get('version')} not promoted"
    return subject, "\n".join(lines)
