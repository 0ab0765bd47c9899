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
