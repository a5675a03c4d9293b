"""Structured logs: JSON lines with the bound correlation ids, and no secret in any of them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from pipelines.ops.logs import configure_json_logging, log_context

SECRETS = {
    "APCA_API_KEY_ID": "AKTESTKEY123",
    "APCA_API_SECRET_KEY": "s3cr3t-value-XYZ",
    "QUANTDAG_ALERT_WEBHOOK_URL": "https://hooks.example.com/services/T0/B0/tokenABC",
}


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    with configure_json_logging(stream, environ=SECRETS):
        yield stream


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_object_with_the_bound_ids(lines: io.StringIO) -> None:
    log = logging.getLogger("quantdag.test")
    with log_context(run_id="r1", session="2024-07-02"):
        log.info("decided %d orders", 3)
        with log_context(attempt=2):
            log.warning("order sent", extra={"client_order_id": "abc123", "symbol": "AAPL"})
    log.info("outside")
    first, second, third = _records(lines)
    assert first["msg"] == "decided 3 orders" and first["level"] == "INFO"
    assert (first["run_id"], first["session"]) == ("r1", "2024-07-02") and "attempt" not in first
    assert (second["attempt"], second["client_order_id"], second["symbol"]) == (2, "abc123", "AAPL")
    assert "run_id" not in third and str(first["ts"]).endswith("+00:00")


def test_no_secret_reaches_a_line(lines: io.StringIO) -> None:
    log = logging.getLogger("quantdag.test")
    log.error("keys %s / %s", SECRETS["APCA_API_KEY_ID"], SECRETS["APCA_API_SECRET_KEY"])
    log.error("posting to %s failed", SECRETS["QUANTDAG_ALERT_WEBHOOK_URL"])
    log.error("cannot connect to postgresql://trader:hunter2@db.internal:5432/trading")
    try:
        raise RuntimeError(f"broker said no to {SECRETS['APCA_API_SECRET_KEY']}")
    except RuntimeError:
        log.exception("order failed")
    text = lines.getvalue()
    for secret in (*SECRETS.values(), "hunter2", "tokenABC"):
        assert secret not in text, secret
    records = _records(lines)
    assert "***" in str(records[0]["msg"]) and "db.internal:5432" in str(records[2]["msg"])
    assert "RuntimeError" in str(records[3]["exc"])


def test_extras_token_paths_and_keyword_passwords_are_masked_too(lines: io.StringIO) -> None:
    log = logging.getLogger("quantdag.test")
    log.error("hook failed", extra={"url": SECRETS["QUANTDAG_ALERT_WEBHOOK_URL"]})
    log.error("requests said: Max retries exceeded with url: /services/T0/B0/tokenABC")
    log.error("dsn host=db user=quantdag password=pw0rd-xyz dbname=quantdag")
    text = lines.getvalue()
    for secret in ("tokenABC", "pw0rd-xyz"):
        assert secret not in text, secret
    assert "host=db" in text


def test_a_malformed_log_call_does_not_raise_where_it_is_made(lines: io.StringIO) -> None:
    logging.getLogger("quantdag.test").error("%d orders", "three")  # a bug in a log call
    (record,) = _records(lines)
    assert "unformatted" in str(record["msg"])


def test_leaving_restores_the_root_logger() -> None:
    root = logging.getLogger()
    before, handlers = root.level, list(root.handlers)
    root.setLevel(logging.WARNING)
    try:
        with configure_json_logging(io.StringIO(), level=logging.INFO, environ=SECRETS):
            assert root.level == logging.INFO
        assert root.level == logging.WARNING and root.handlers == handlers
    finally:
        root.setLevel(before)
