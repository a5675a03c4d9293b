"""Structured logs: one JSON object a line, with the correlation ids of what is being done.

:func:`log_context` binds ids (``run_id``, ``session``, ``attempt``, ``client_order_id``, ...)
to the current context (:mod:`contextvars`: they follow the code into the threads started with
:func:`contextvars.copy_context`, not into a pool's threads, where a log call passes its ids as
``extra``); :class:`JsonFormatter` writes them beside the time, level, logger and message of
every record. :class:`SecretsFilter` replaces the values of the secret environment variables
(the broker's keys, the alert webhook, the database passwords) and the credentials of any URI
in a message by ``***`` before anything is written.

Example::

    with configure_json_logging(sys.stderr), log_context(run_id=run_id, attempt=1):
        log.info("order sent", extra={"client_order_id": cid})
    # {"ts": "2024-07-02T14:00:00.123456+00:00", "level": "INFO", "logger": "...",
    #  "msg": "order sent", "run_id": "...", "session": "2024-07-02", "attempt": 1,
    #  "client_order_id": "..."}
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

from pipelines.secrets import MASK, redact_uri

SECRET_VARIABLES = (
    "APCA_API_KEY_ID",
    "APCA_API_SECRET_KEY",
    "QUANTDAG_ALERT_WEBHOOK_URL",
    "QUANTDAG_ALERT_SMTP_PASSWORD",
    "QUANTDAG_DATABASE_URL",
    "QUANTDAG_MLFLOW_URI",
    "QUANTDAG_OPTUNA_URI",
    "DAGSTER_PG_URL",
    "PGPASSWORD",
)
"""Environment variables whose values never reach a log line."""
CORRELATION_FIELDS = ("run_id", "session", "attempt", "bar_ts", "client_order_id", "symbol")

_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "quantdag_log_context", default=None
)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")
_KEYWORD_SECRET = re.compile(r"\b((?:password|passwd|pwd|secret|token)\s*=\s*)[^\s&;]+", re.I)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


@contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Bind ``ids`` to every record logged inside the block (nested blocks add to them)."""
    token = _context.set({**(_context.get() or {}), **ids})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> Mapping[str, Any]:
    """The ids bound now."""
    return _context.get() or {}


class SecretsFilter(logging.Filter):
    """Masks the secret environment variables' values (read when the filter is made, and
    again from ``environ`` if given) and the credentials of URIs in each record's message."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        env = os.environ if environ is None else environ
        values = {v for k in SECRET_VARIABLES if (v := env.get(k, "")) and len(v) >= 4}
        # A secret URL's path (a webhook's token) shows alone in some errors ("url: /x/T0/..").
        paths = {p for v in values if len(p := urlsplit(v).path) >= 8}
        self.secrets = sorted(values | paths, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        text = _KEYWORD_SECRET.sub(lambda m: f"{m.group(1)}{MASK}", text)
        return _URI.sub(lambda m: redact_uri(m.group(0)), text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call must not raise at its call site
            message = f"{record.msg} (unformatted; args {record.args!r})"
        record.msg = self.mask(message)
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.mask(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a record: ``ts`` (UTC ISO), ``level``, ``logger``, ``msg``, the bound
    ids, the record's ``extra`` fields, and ``exc`` (the traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(current_context())
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


@contextmanager
def configure_json_logging(
    stream: IO[str], level: int = logging.INFO, environ: Mapping[str, str] | None = None
) -> Iterator[logging.Handler]:
    """While the context lasts, the root logger's records (``level`` and above) also go to
    ``stream`` as JSON lines, secrets masked; on leaving, the handler is removed and the root
    logger's level is what it was."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(SecretsFilter(environ))
    handler.setLevel(level)
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
