"""Alerts to people: a Slack-compatible webhook and SMTP, de-duplicated and rate-limited.

An :class:`Alert` names its ``key``: the condition it reports (e.g. ``kill_switch:2024-07-02T
14:02:00+00:00``); the same key is sent once per ``dedup_s`` however often it is raised (the
live sensor raises its alerts at every tick). Across all keys at most ``max_per_hour`` alerts
are sent an hour (pages, which ask someone to act now, are never held back); beyond that
warnings are logged ``rate_limited`` once a condition (and in the error log), and each alert
sent while some of the last hour's were held back says how many conditions were. The log is the
trading database's ``alert_log`` table, so the de-duplication holds across processes (the
sensor daemon, the run workers). ``now`` is a parameter; nothing here reads the clock.

A sink that fails raises :class:`AlertError` after its own bounded retries of transient
errors; the other sinks are still tried, and the alert is logged as sent to those that took
it. Secrets (the webhook URL carries a token, the SMTP password) are never in a message, a
log line or a ``repr``.

Example::

    alerter = Alerter([WebhookSink(url)], engine, AlertPolicy(dedup_s=3600, max_per_hour=20))
    alerter.raise_alert(Alert("kill_switch", "kill_switch:...", "kill switch tripped"), now)
"""

from __future__ import annotations

import logging
import random
import smtplib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Literal, Protocol
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa

from pipelines.data.tables import alert_log

log = logging.getLogger(__name__)

Severity = Literal["page", "warn"]
Outcome = Literal["sent", "logged", "duplicate", "rate_limited", "failed"]


class AlertError(RuntimeError):
    """A sink could not deliver an alert (say which and why, without its secret)."""


@dataclass(frozen=True)
class Alert:
    """What to tell people: ``kind`` (``kill_switch``, ``heartbeat_stale``, ``run_failed``,
    ...), ``key`` (the condition, for de-duplication), a one-line ``summary``, ``details``
    and a ``severity`` (``page``: act now; ``warn``: look today)."""

    kind: str
    key: str
    summary: str
    details: str = ""
    severity: Severity = "page"

    def text(self) -> str:
        head = f"[QuantDAG {self.severity.upper()}] {self.summary}"
        return f"{head}\n{self.details}" if self.details else head


class AlertSink(Protocol):
    name: str

    def send(self, alert: Alert) -> None:
        """Deliver ``alert`` or raise :class:`AlertError`."""
        ...


@dataclass(frozen=True)
class AlertPolicy:
    """``dedup_s``: seconds in which an alert of the same key is not sent again (e.g. 3600);
    ``max_per_hour``: alerts sent an hour over all keys (e.g. 20)."""

    dedup_s: float = 3600.0
    max_per_hour: int = 20

    def __post_init__(self) -> None:
        if self.dedup_s < 0:
            raise ValueError("AlertPolicy.dedup_s must not be negative")
        if self.max_per_hour < 1:
            raise ValueError("AlertPolicy.max_per_hour must be at least 1")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, requests.Timeout | requests.ConnectionError)


@dataclass
class WebhookSink:
    """POSTs ``{"text": ...}`` (Slack's incoming-webhook shape, which Mattermost and Teams'
    Slack-compatible hooks take too) to ``url``; retries timeouts, dropped connections, 429
    and 5xx ``retries`` times with backoff and full jitter."""

    url: str
    timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 0.5
    name: str = "webhook"
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __repr__(self) -> str:
        parts = urlsplit(self.url)
        return f"WebhookSink({parts.scheme}://{parts.hostname}/…)"

    def send(self, alert: Alert) -> None:
        where = urlsplit(self.url).hostname
        for attempt in range(self.retries + 1):
            try:
                answer = requests.post(
                    self.url, json={"text": alert.text()}, timeout=self.timeout_s
                )
            except requests.RequestException as exc:
                if not _transient(exc) or attempt == self.retries:
                    raise AlertError(
                        f"webhook at {where}: {type(exc).__name__} after {attempt + 1} tries"
                    ) from None
            else:
                if answer.status_code < 300:
                    return
                if answer.status_code not in (429, 500, 502, 503, 504) or attempt == self.retries:
                    raise AlertError(
                        f"webhook at {where} answered HTTP {answer.status_code} after "
                        f"{attempt + 1} tries: check the hook (QUANTDAG_ALERT_WEBHOOK_URL)"
                    )
            self.sleep(self.rng.uniform(0, self.backoff_s * 2**attempt))


@dataclass
class SmtpSink:
    """Mails the alert from ``sender`` to ``recipients`` through ``host:port`` (``starttls``
    and a login when ``username`` is given; the password is never shown)."""

    host: str
    port: int
    sender: str
    recipients: Sequence[str]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    timeout_s: float = 10.0
    name: str = "smtp"

    def send(self, alert: Alert) -> None:
        if self.username and not self.starttls and self.host not in ("127.0.0.1", "localhost"):
            raise AlertError(
                f"SMTP {self.host}:{self.port}: refusing to send the login in clear: set "
                "QUANTDAG_ALERT_SMTP_STARTTLS=1"
            )
        message = EmailMessage()
        message["Subject"] = f"[QuantDAG {alert.severity.upper()}] {alert.summary}"
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message.set_content(alert.details or alert.summary)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise AlertError(
                f"SMTP {self.host}:{self.port}: {type(exc).__name__}: check the server and "
                "QUANTDAG_ALERT_SMTP_* settings"
            ) from None


@dataclass(frozen=True)
class AlertResult:
    """What became of one alert: ``outcome``, the sinks that took it and those that failed."""

    outcome: Outcome
    sent_to: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


class Alerter:
    """Sends alerts to ``sinks`` under ``policy``, logging them in ``engine``'s
    ``alert_log`` (the trading database, migrated)."""

    def __init__(
        self, sinks: Sequence[AlertSink], engine: sa.Engine, policy: AlertPolicy | None = None
    ) -> None:
        self.sinks = list(sinks)
        self.engine = engine
        self.policy = policy or AlertPolicy()

    def raise_alert(self, alert: Alert, now: datetime) -> AlertResult:
        """Send ``alert`` at ``now`` (UTC) unless its key was sent within ``dedup_s`` or the
        hour's budget is spent. Raises :class:`AlertError` if every sink failed."""
        if now.tzinfo is None:
            raise ValueError(f"alert time {now} has no time zone: pass a UTC instant")
        c = alert_log.c
        with self.engine.connect() as conn:
            recent = conn.execute(
                sa.select(sa.func.count()).where(
                    c.key == alert.key,
                    c.outcome.in_(("sent", "logged")),
                    c.at > now - timedelta(seconds=self.policy.dedup_s),
                )
            ).scalar_one()
            if recent:
                return AlertResult("duplicate")
            hour = c.at > now - timedelta(hours=1)
            sent_hour = conn.execute(
                sa.select(sa.func.count()).where(c.outcome == "sent", hour)
            ).scalar_one()
            held_keys = conn.execute(
                sa.select(sa.func.count(sa.distinct(c.key))).where(
                    c.outcome == "rate_limited", hour
                )
            ).scalar_one()
            held_before = conn.execute(
                sa.select(sa.func.count()).where(
                    c.key == alert.key,
                    c.outcome == "rate_limited",
                    c.at > now - timedelta(seconds=self.policy.dedup_s),
                )
            ).scalar_one()
        # A page (act now) is never held back: the limit is for the warnings' floods.
        if alert.severity != "page" and sent_hour >= self.policy.max_per_hour:
            if not held_before:  # one row a condition, not one a tick
                self._log(alert, now, "rate_limited", ())
                log.error("alert held back by the rate limit: %s", alert.summary)
            return AlertResult("rate_limited")
        if held_keys:
            alert = Alert(
                alert.kind,
                alert.key,
                alert.summary,
                f"{alert.details}\n({held_keys} conditions in the last hour were held back by "
                f"the limit of {self.policy.max_per_hour} alerts an hour: see the alert_log "
                "table)",
                alert.severity,
            )
        if not self.sinks:
            # No sink configured: the error log and alert_log are where it is seen.
            log.error("ALERT %s", alert.text())
            self._log(alert, now, "logged", ())
            return AlertResult("logged")
        sent: list[str] = []
        failed: list[str] = []
        for sink in self.sinks:
            try:
                sink.send(alert)
                sent.append(sink.name)
            except AlertError as exc:
                log.error("alert not delivered by %s: %s", sink.name, exc)
                failed.append(f"{sink.name}: {exc}")
        if not sent:
            self._log(alert, now, "failed", ())
            raise AlertError(f"no sink delivered {alert.summary!r}: " + "; ".join(failed))
        self._log(alert, now, "sent", sent)
        return AlertResult("sent", tuple(sent), tuple(failed))

    def retry_failed(
        self, now: datetime, within: timedelta = timedelta(hours=6), attempts: int = 5
    ) -> list[AlertResult]:
        """Send again each alert no sink delivered (outcome ``failed``): while fewer than
        ``attempts`` tries have failed since it was last delivered, and its first failure is
        less than ``within`` old; one result per alert tried. The resend says when the
        condition was first raised. An alert that fails again is logged ``failed`` again (and
        counts as a try); past either bound it is left in the log and the error log."""
        c = alert_log.c
        failing = sa.select(c.key).where(c.outcome == "failed", c.at > now - within)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.key, c.kind, c.severity, c.summary, c.details, c.outcome, c.at)
                .where(c.key.in_(failing))
                .order_by(c.id)
            ).all()
        # key -> (the alert, failed tries since its last delivery, the first of them)
        pending: dict[str, tuple[Alert, int, datetime]] = {}
        for key, kind, severity, summary, details, outcome, at in rows:
            if outcome == "failed":
                _, tries, first = pending.get(key, (None, 0, at))
                alert = Alert(kind, key, summary, details or "", severity)
                pending[key] = (alert, tries + 1, first)
            elif outcome in ("sent", "logged"):
                pending.pop(key, None)
        results = []
        for alert, tries, first in pending.values():
            if tries >= attempts or first <= now - within:
                continue
            first_text = first.astimezone(UTC).isoformat(timespec="seconds")
            if first_text not in alert.details:
                alert = replace(
                    alert,
                    details=f"{alert.details}\n(first raised {first_text}; not delivered then)",
                )
            try:
                results.append(self.raise_alert(alert, now))
            except AlertError as exc:
                log.error("alert %s not delivered on attempt %d: %s", alert.key, tries + 1, exc)
                results.append(AlertResult("failed"))
        return results

    def _log(self, alert: Alert, now: datetime, outcome: Outcome, sinks: Sequence[str]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(alert_log).values(
                    at=now,
                    key=alert.key,
                    kind=alert.kind,
                    severity=alert.severity,
                    summary=alert.summary,
                    outcome=outcome,
                    sinks=",".join(sinks),
                    details=alert.details,
                )
            )
