"""Alerts through a local Slack-compatible webhook receiver (HTTP on 127.0.0.1) and a real SMTP
server (aiosmtpd on 127.0.0.1): delivered, de-duplicated, rate-limited, retried, and failing
with a message that names the sink and not its secret."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from pipelines.data.store import BarStore
from pipelines.data.tables import alert_log
from pipelines.ops.alerts import (
    Alert,
    Alerter,
    AlertError,
    AlertPolicy,
    AlertResult,
    SmtpSink,
    WebhookSink,
)

pytestmark = pytest.mark.integration

T0 = datetime(2024, 7, 2, 14, 0, tzinfo=UTC)
TOKEN = "T000/B000/XXXXsecretXXXX"


@dataclass
class Hook:
    """A webhook receiver: answers ``statuses`` in turn (then 200), keeps the bodies."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = state.statuses.pop(0) if state.statuses else 200
            if status == 200:
                state.bodies.append(json.loads(body))
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}/services/{TOKEN}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[_Inbox, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    store = BarStore(f"sqlite:///{tmp_path / 'trading.db'}")
    store.migrate()
    return store.engine


def _outcomes(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(alert_log.c.key, alert_log.c.outcome).order_by("id"))
        return [(r.key, r.outcome) for r in rows]


TRIP = Alert(
    "kill_switch",
    "kill_switch:2024-07-02T14:00:00+00:00",
    "kill switch tripped by live_session",
    "reconciliation: positions the record does not explain: AAA: broker 7, record 0",
)


def test_an_alert_reaches_the_webhook_and_the_mailbox_once(
    hook: Hook, smtp: tuple[_Inbox, int], engine: sa.Engine
) -> None:
    inbox, port = smtp
    sinks = [
        WebhookSink(hook.url, sleep=lambda s: None),
        SmtpSink("127.0.0.1", port, "quantdag@localhost", ["ops@localhost"]),
    ]
    alerter = Alerter(sinks, engine, AlertPolicy(dedup_s=600, max_per_hour=20))
    first = alerter.raise_alert(TRIP, T0)
    assert first.outcome == "sent" and first.sent_to == ("webhook", "smtp")
    # The sensor raises it again at every tick: not sent again within dedup_s...
    assert alerter.raise_alert(TRIP, T0 + timedelta(seconds=30)).outcome == "duplicate"
    assert alerter.raise_alert(TRIP, T0 + timedelta(seconds=599)).outcome == "duplicate"
    assert len(hook.bodies) == 1 and len(inbox.messages) == 1
    text = hook.bodies[0]["text"]
    assert text.startswith("[QuantDAG PAGE] kill switch tripped") and "AAA: broker 7" in text
    mail = inbox.messages[0]
    assert mail["Subject"] == "[QuantDAG PAGE] kill switch tripped by live_session"
    assert "AAA: broker 7" in mail.get_payload()
    # ...and again once it has passed, if the condition holds.
    assert alerter.raise_alert(TRIP, T0 + timedelta(seconds=601)).outcome == "sent"
    assert len(hook.bodies) == 2
    assert _outcomes(engine) == [(TRIP.key, "sent"), (TRIP.key, "sent")]


def test_the_rate_limit_holds_back_a_flood_of_warnings_never_a_page(
    hook: Hook, engine: sa.Engine
) -> None:
    alerter = Alerter([WebhookSink(hook.url)], engine, AlertPolicy(max_per_hour=2))

    def warn(i: int, at: datetime) -> str:
        alert = Alert("run_failed", f"run:{i}", f"run {i} failed", severity="warn")
        return alerter.raise_alert(alert, at).outcome

    assert [warn(i, T0 + timedelta(seconds=i)) for i in range(4)] == [
        "sent",
        "sent",
        "rate_limited",
        "rate_limited",
    ]
    assert warn(3, T0 + timedelta(seconds=30)) == "rate_limited"  # the same condition, a tick on
    assert len(hook.bodies) == 2
    # A page is sent whatever the budget says, and says what was held back.
    assert alerter.raise_alert(TRIP, T0 + timedelta(seconds=40)).outcome == "sent"
    assert "2 conditions in the last hour were held back" in hook.bodies[-1]["text"]
    assert _outcomes(engine).count(("run:3", "rate_limited")) == 1  # one row a condition
    later = warn(9, T0 + timedelta(hours=1, seconds=41))
    assert later == "sent" and len(hook.bodies) == 4


def test_a_failing_sink_is_retried_named_without_its_secret_and_the_others_deliver(
    hook: Hook, smtp: tuple[_Inbox, int], engine: sa.Engine
) -> None:
    inbox, port = smtp
    waits: list[float] = []
    webhook = WebhookSink(hook.url, retries=2, sleep=waits.append)
    alerter = Alerter(
        [webhook, SmtpSink("127.0.0.1", port, "q@localhost", ["o@localhost"])], engine
    )
    hook.statuses = [503, 200]  # a transient error, then taken
    assert alerter.raise_alert(TRIP, T0).sent_to == ("webhook", "smtp") and len(waits) == 1
    hook.statuses = [403, 403, 403]  # the hook was revoked
    other = Alert("run_failed", "run:1", "run 1 failed")
    result = alerter.raise_alert(other, T0)
    assert result.sent_to == ("smtp",) and len(inbox.messages) == 2
    (failure,) = result.failed
    assert "HTTP 403" in failure and "127.0.0.1" in failure and TOKEN not in failure
    assert TOKEN not in repr(webhook)


def test_when_no_sink_delivers_the_alert_raises_and_is_logged_failed(engine: sa.Engine) -> None:
    closed = WebhookSink("http://127.0.0.1:9/hook", retries=1, sleep=lambda s: None)
    with pytest.raises(AlertError, match="no sink delivered"):
        Alerter([closed], engine).raise_alert(TRIP, T0)
    assert _outcomes(engine) == [(TRIP.key, "failed")]


def test_an_smtp_login_is_never_sent_in_clear(engine: sa.Engine) -> None:
    sink = SmtpSink("mail.example.com", 25, "q@x", ["o@x"], "user", "pw", starttls=False)
    with pytest.raises(AlertError, match="refusing to send the login in clear"):
        sink.send(TRIP)


def test_an_undelivered_alert_is_sent_again_until_delivered_and_not_after(
    hook: Hook, engine: sa.Engine
) -> None:
    webhook = WebhookSink(hook.url, retries=1, sleep=lambda s: None)
    alerter = Alerter([webhook], engine)
    hook.statuses = [403]  # the receiver refuses once
    with pytest.raises(AlertError):
        alerter.raise_alert(TRIP, T0)
    assert alerter.retry_failed(T0 + timedelta(minutes=1)) == [AlertResult("sent", ("webhook",))]
    (body,) = hook.bodies
    text = json.dumps(body)
    assert TRIP.details in text  # the same alert, details included, and when it was raised
    assert "first raised 2024-07-02T14:00:00+00:00; not delivered then" in text
    assert alerter.retry_failed(T0 + timedelta(minutes=2)) == []  # delivered: not again
    assert _outcomes(engine) == [(TRIP.key, "failed"), (TRIP.key, "sent")]


def test_an_alert_no_sink_takes_is_tried_a_bounded_number_of_times(engine: sa.Engine) -> None:
    closed = WebhookSink("http://127.0.0.1:9/hook", retries=1, sleep=lambda s: None)
    alerter = Alerter([closed], engine)
    with pytest.raises(AlertError):
        alerter.raise_alert(TRIP, T0)
    tried = [alerter.retry_failed(T0 + timedelta(minutes=m), attempts=3) for m in range(1, 5)]
    assert tried == [[AlertResult("failed")], [AlertResult("failed")], [], []]
    assert _outcomes(engine) == [(TRIP.key, "failed")] * 3
    # Nor later, when the first failures have left any window: the bound is on the condition.
    for hours in (5, 7, 13, 25):
        assert alerter.retry_failed(T0 + timedelta(hours=hours), attempts=3) == []
    assert _outcomes(engine) == [(TRIP.key, "failed")] * 3


def test_no_retry_once_the_first_failure_is_older_than_the_window(
    hook: Hook, engine: sa.Engine
) -> None:
    alerter = Alerter([WebhookSink(hook.url, retries=1, sleep=lambda s: None)], engine)
    hook.statuses = [403]
    with pytest.raises(AlertError):
        alerter.raise_alert(TRIP, T0)
    assert alerter.retry_failed(T0 + timedelta(hours=6, seconds=1)) == []
    assert hook.bodies == []
