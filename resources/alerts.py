"""Where alerts go: a Slack-compatible webhook and SMTP (real), or a list in memory (fake)."""

from typing import Any

import dagster as dg
import sqlalchemy as sa
from pydantic import PrivateAttr

from pipelines.ops.alerts import Alert, Alerter, AlertPolicy, AlertSink, SmtpSink, WebhookSink


class AlertsResource(dg.ConfigurableResource):  # type: ignore[misc]
    """Alerts to people. ``webhook_url``: a Slack-compatible incoming webhook (it carries a
    token: give it as ``dg.EnvVar("QUANTDAG_ALERT_WEBHOOK_URL")``); ``smtp_host`` (empty: no
    mail), ``smtp_port``, ``smtp_sender``, ``smtp_recipients``, ``smtp_username`` and
    ``smtp_password`` (an ``EnvVar``), ``smtp_starttls``. ``dedup_s``: seconds in which the
    same condition is not sent again (e.g. 3600); ``max_per_hour``: alerts an hour over all
    conditions (e.g. 20). With no sink configured an alert goes to the error log and the
    trading database's ``alert_log`` only."""

    webhook_url: str = ""
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_sender: str = "quantdag@localhost"
    smtp_recipients: list[str] = []
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    dedup_s: float = 3600.0
    max_per_hour: int = 20

    def sinks(self) -> list[AlertSink]:
        out: list[AlertSink] = []
        if self.webhook_url:
            out.append(WebhookSink(self.webhook_url))
        if self.smtp_host:
            if not self.smtp_recipients:
                raise ValueError(
                    "alerts: smtp_host is set but smtp_recipients is empty: name who gets mail "
                    "(QUANTDAG_ALERT_SMTP_TO, comma-separated)"
                )
            out.append(
                SmtpSink(
                    self.smtp_host,
                    self.smtp_port,
                    self.smtp_sender,
                    list(self.smtp_recipients),
                    self.smtp_username or None,
                    self.smtp_password or None,
                    self.smtp_starttls,
                )
            )
        return out

    def alerter(self, engine: sa.Engine) -> Alerter:
        """An :class:`Alerter` logging in ``engine`` (the trading database)."""
        return Alerter(self.sinks(), engine, AlertPolicy(self.dedup_s, self.max_per_hour))


class _Recorder:
    name = "memory"

    def __init__(self, into: list[Alert]) -> None:
        self.into = into

    def send(self, alert: Alert) -> None:
        self.into.append(alert)


class RecordingAlertsResource(AlertsResource):
    """The fake: alerts kept in :attr:`sent` (de-duplication and rate limit as the real one)."""

    _sent: list[Alert] = PrivateAttr(default_factory=list)

    @property
    def sent(self) -> list[Alert]:
        return self._sent

    def sinks(self) -> list[Any]:
        return [_Recorder(self._sent)]
