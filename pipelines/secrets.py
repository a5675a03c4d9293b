"""Credentials never leave the process: URIs are redacted before they are shown anywhere.

Secrets come only from the environment (``QUANTDAG_DATABASE_URL``, ``QUANTDAG_MLFLOW_URI``,
``QUANTDAG_OPTUNA_URI``, ``DAGSTER_PG_URL``, ``APCA_API_KEY_ID``, ``APCA_API_SECRET_KEY``),
and the Dagster resources read them through ``dg.EnvVar`` so that the UI and the run storage
hold the variable's name, never its value. Whatever prints, logs or stores a URI (an error
message, Dagster metadata, a log line) passes it through :func:`redact_uri` first.
"""

from __future__ import annotations

import re

MASK = "***"

# A query (or libpq keyword) parameter whose name says it holds a credential, and its value:
# quoted ('...' or "...") or up to the next separator.
_SECRET_PARAM = re.compile(
    r"""(?P<key>(?:^|(?<=[?&;\s]))[\w.\-]*"""
    r"""(?:pass|pwd|secret|token|key|credential|auth|signature|sig)[\w.\-]*)"""
    r"""(?P<sep>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^&;#\s]*)""",
    re.IGNORECASE,
)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def redact_uri(uri: str) -> str:
    """``uri`` with its credentials replaced by ``***``: the whole user-info part
    (``user:password@``, also a bare token ``token@``) and the value of every parameter whose
    name looks like a credential (``password=``, ``secret=``, ``token=``, ``api_key=``,
    ``X-Amz-Signature=``...), in a query string or a libpq keyword string. Scheme, host, port,
    path and the other parameters are kept, so that a message still says where.

    A raw ``@``, ``/``, ``?`` or ``#`` in a password (not percent-encoded) cannot be told apart
    from the rest with certainty: the user-info is taken to end at the last ``@``, so that a
    password is never shown; at worst part of the path is hidden with it.

    Example::

        >>> redact_uri("postgresql+psycopg://quant:hunter2@db:5432/trading?sslmode=require")
        'postgresql+psycopg://***@db:5432/trading?sslmode=require'
        >>> redact_uri("http://mlflow:5000/?token=abc")
        'http://mlflow:5000/?token=***'
        >>> redact_uri("sqlite:///.quantdag/mlflow.db")
        'sqlite:///.quantdag/mlflow.db'
    """
    text = _SECRET_PARAM.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", uri)
    head, userinfo, rest = _split(text)
    return text if userinfo is None else f"{head}{MASK}@{rest}"


def has_password(uri: str) -> bool:
    """Whether ``uri`` carries a password (``user:password@``) or a credential parameter
    (``?password=``, ``token=``...). A user name alone (``postgres@host``) is not a secret.

    Example: ``has_password("postgresql://quant:pw@db/trading")`` is True,
    ``has_password("postgresql://quant@db/trading")`` is False."""
    if _SECRET_PARAM.search(uri):
        return True
    _, userinfo, _ = _split(uri)
    return userinfo is not None and ":" in userinfo


def _split(text: str) -> tuple[str, str | None, str]:
    """``(scheme://, user-info or None, the rest after its '@')``; no user-info in a URI
    without an authority (``sqlite:///path``, ``file:///path``) or in a file-system path."""
    scheme = _SCHEME.match(text)
    if scheme is not None:
        head, rest = scheme.group(0), text[scheme.end() :]
        if rest.startswith("/"):
            return head, None, rest
    elif text.startswith(("/", ".", "~", "\\")) or _DRIVE.match(text):
        return "", None, text
    else:
        head, rest = "", text
    at = rest.rfind("@")
    if at < 0:
        return head, None, rest
    return head, rest[:at], rest[at + 1 :]
