"""What both fraud DAGs share: settings, the champion Asset, defaults, notification channels.

The DAGs stay thin: every task calls a function of the ``training`` package, the same one the
``fraudops`` CLI calls.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from airflow.sdk import Asset, Connection

from training.core.config import Settings, comma_list, get_settings
from training.notify import Channels

log = logging.getLogger(__name__)

# Emitted by fraud_retrain when `champion` moves; fraud_build_deploy is scheduled on it.
CHAMPION = Asset("fraud_champion", uri="x-fraud-mlops://registry/champion")

DEFAULT_ARGS = {
    "owner": "fraud-ml",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "execution_timeout": timedelta(minutes=30),
}
WEBHOOK_CONN = "fraud_notify_webhook"  # http connection: host/schema/port/path, or extra {"url"}
SMTP_CONN = "fraud_notify_smtp"  # smtp connection; extra {"to": "a@b,c@d", "from": ..., "starttls"}


def settings() -> Settings:
    """Fresh settings for the task (env of the worker)."""
    get_settings.cache_clear()
    return get_settings()


def data_path(cfg: Settings) -> Path:
    return cfg.data_dir / "transactions"


def _connection(conn_id: str) -> Connection | None:
    try:
        return Connection.get(conn_id)
    except Exception:  # not defined (AirflowNotFoundException) or no metadata access
        return None


def channels(cfg: Settings) -> Channels:
    """Notification channels: Airflow connections when defined, else FRAUD_NOTIFY_* settings."""
    out = Channels.from_settings(cfg)
    webhook = _connection(WEBHOOK_CONN)
    if webhook is not None:
        extra = webhook.extra_dejson or {}
        out.webhook_url = extra.get("url") or webhook.get_uri()
    smtp = _connection(SMTP_CONN)
    if smtp is not None:
        extra = smtp.extra_dejson or {}
        out.smtp_host, out.smtp_port = smtp.host, int(smtp.port or 25)
        out.smtp_user, out.smtp_password = smtp.login, smtp.password
        out.smtp_starttls = bool(extra.get("starttls", False))
        out.email_from = extra.get("from", out.email_from)
        if extra.get("to"):
            out.email_to = comma_list(str(extra["to"]))
    return out
