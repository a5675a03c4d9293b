"""redact_uri: no credential of a SQLAlchemy, psycopg, MLflow or plain URI survives, and the
rest (scheme, host, port, database, other parameters) still says where."""

from __future__ import annotations

import doctest
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

import pipelines.secrets
from pipelines.config import ConfigError, Settings, load_model
from pipelines.secrets import has_password, redact_uri

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        # SQLAlchemy / psycopg URLs.
        (
            "postgresql+psycopg://u:p4ss@h:5432/db",
            "postgresql+psycopg://***@h:5432/db",
        ),
        ("postgresql://u:p4ss@h/db?sslmode=require", "postgresql://***@h/db?sslmode=require"),
        ("mysql://u:p4ss@h/db", "mysql://***@h/db"),
        ("mysql+pymysql://u:p4ss@[::1]:3306/db", "mysql+pymysql://***@[::1]:3306/db"),
        # A percent-encoded '@' (and ':' and '/') in the password.
        ("postgresql://u:p%40s%3As%2Fs@h:5432/db", "postgresql://***@h:5432/db"),
        # A raw '@', '/', '?', '#' in the password (not encoded, as people do type them).
        ("postgresql://u:p@ss@h/db", "postgresql://***@h/db"),
        ("postgresql://u:pa/s?s#x@h:5432/db", "postgresql://***@h:5432/db"),
        # A user without a password (a bare token in the user part is a credential too).
        (
            "postgresql://postgres@127.0.0.1:5432/postgres",
            "postgresql://***@127.0.0.1:5432/postgres",
        ),
        ("https://ghp_t0ken@mlflow.example.com/", "https://***@mlflow.example.com/"),
        # Credentials in the query string.
        (
            "postgresql://h/db?user=u&password=p4ss&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
        ("http://h:5000/?token=t0k&x=1", "http://h:5000/?token=***&x=1"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA&X-Amz-Signature=f00",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
        ("http://h/?api_key=k3y;secret=s3c", "http://h/?api_key=***;secret=***"),
        ("http://u:p4ss@h/?PASSWORD=p4ss", "http://***@h/?PASSWORD=***"),
        # MLflow tracking URIs.
        ("http://u:p4ss@h:5000", "http://***@h:5000"),
        ("https://mlflow.example.com", "https://mlflow.example.com"),
        ("databricks://profile", "databricks://profile"),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("sqlite:////abs/a@b/mlflow.db", "sqlite:////abs/a@b/mlflow.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("file:///home/q/mlruns", "file:///home/q/mlruns"),
        ("file:///home/a@b/mlruns", "file:///home/a@b/mlruns"),
        # No scheme: user-info, a libpq keyword string, a file path.
        ("u:p4ss@h:5432/db", "***@h:5432/db"),
        (
            "host=h port=5432 user=u password=p4ss dbname=d",
            "host=h port=5432 user=u password=*** dbname=d",
        ),
        ("host=h password='p 4 ss' dbname=d", "host=h password=*** dbname=d"),
        ("/home/a@b/mlflow.db", "/home/a@b/mlflow.db"),
        ("./mlruns", "./mlruns"),
        ("", ""),
    ],
)
def test_known_forms(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_docstring_examples_hold() -> None:
    outcome = doctest.testmod(pipelines.secrets)
    assert outcome.attempted >= 2 and outcome.failed == 0


# Any printable text (ASCII and beyond), as a password behind a marker that appears nowhere else.
_PASSWORDS = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30).map(
    lambda s: "Pw" + s
)


@given(password=_PASSWORDS, user=st.sampled_from(["u", "quant", "a.b-c"]))
def test_encoded_password_never_shows_and_the_rest_parses_the_same(
    password: str, user: str
) -> None:
    """SQLAlchemy's own parser is the reference for the URL, host and database we keep."""
    uri = f"postgresql+psycopg://{user}:{quote(password, safe='')}@db.internal:6543/trading"
    assert sa.make_url(uri).password == password
    shown = redact_uri(uri)
    assert password not in shown and quote(password, safe="") not in shown
    before, after = sa.make_url(uri), sa.make_url(shown)
    assert (after.drivername, after.host, after.port, after.database) == (
        before.drivername,
        before.host,
        before.port,
        before.database,
    )


@given(password=_PASSWORDS)
def test_raw_password_never_shows(password: str) -> None:
    """Not percent-encoded, with any '@', '/', '?', '#', '&' in it: still never shown."""
    for uri in (
        f"postgresql://u:{password}@h:5432/db",
        f"http://u:{password}@h:5000",
        f"u:{password}@h/db",
    ):
        assert password not in redact_uri(uri), uri


@pytest.mark.parametrize(
    ("uri", "secret"),
    [
        ("postgresql://u:p4ss@h/db", True),
        ("postgresql://u:@h/db", True),
        ("postgresql://h/db?password=p4ss", True),
        ("host=h password=p4ss", True),
        ("postgresql://postgres@127.0.0.1/db", False),
        ("sqlite:///.quantdag/trading.db", False),
        ("sqlite:////home/a:b@c/trading.db", False),
        ("http://127.0.0.1:8765", False),
    ],
)
def test_has_password(uri: str, secret: bool) -> None:
    assert has_password(uri) is secret


def test_a_settings_file_with_a_password_is_refused_without_showing_it(tmp_path: Path) -> None:
    text = (ROOT / "config" / "settings.yaml").read_text()
    plain = "sqlite:///.quantdag/trading.db"
    assert plain in text
    path = tmp_path / "settings.yaml"
    path.write_text(
        text.replace(plain, "postgresql://quant:Pw-hunter2@db:5432/trading").replace(
            "feed: iex", "feed: iex\n      url_override: http://key:Pw-hunter3@127.0.0.1:8765"
        )
    )
    with pytest.raises(ConfigError) as err:
        load_model(path, Settings)
    message = str(err.value)
    assert "environments.local.database_url" in message and "QUANTDAG_DATABASE_URL" in message
    assert "environments.paper.source.alpaca.url_override" in message
    assert "postgresql://***@db:5432/trading" in message
    assert "Pw-hunter" not in message


def test_the_secret_search_sees_into_compressed_blobs_sqlite_and_parquet(tmp_path: Path) -> None:
    """The search the no-secrets tests rely on finds a secret where a plain grep of the bytes
    does not: a zlib blob in a SQLite table (as Dagster stores its snapshots) and a column of a
    compressed Parquet file."""
    import sqlite3
    import uuid
    import zlib

    import polars as pl

    from tests.secrets_search import Search, scan_file

    token = f"S3cr3t-test-{uuid.uuid4().hex}"
    blob = zlib.compress(f'{{"tracking_uri": "postgresql://u:{token}@h/db"}}'.encode() * 50)
    assert token.encode() not in blob
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        conn.execute("CREATE TABLE snapshots (id INTEGER, body BLOB)")
        conn.execute("INSERT INTO snapshots VALUES (1, ?)", (blob,))
    conn.close()
    pl.DataFrame({"n": range(1000), "note": [f"uri {token} uri"] * 1000}).write_parquet(
        tmp_path / "frame.parquet", compression="zstd"
    )
    pl.DataFrame({"n": range(1000), "note": ["nothing"] * 1000}).write_parquet(
        tmp_path / "clean.parquet", compression="zstd"
    )
    search = Search({"QUANTDAG_MLFLOW_URI": token})
    for name in ("runs.db", "frame.parquet", "clean.parquet"):
        scan_file(search, tmp_path / name, tmp_path)
    assert any("in sqlite runs.db:snapshots" in h for h in search.hits), search.hits
    assert any("in parquet:frame.parquet.note" in h for h in search.hits), search.hits
    assert not any("clean.parquet" in h for h in search.hits), search.hits
