"""Search everything a run wrote for planted secrets: texts, blobs (zlib and gzip blobs
inflated), every row of every table of a PostgreSQL or SQLite database, and files (Parquet read
column by column, with its key-value metadata)."""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import sqlalchemy as sa

Rows = Iterator[tuple[str, tuple[object, ...]]]


@dataclass
class Search:
    """Every secret looked for in every text or blob given to :meth:`scan`; what was searched is
    counted by place, so that a test can prove it looked at something."""

    secrets: dict[str, str]
    hits: list[str] = field(default_factory=list)
    searched: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        # The random part of each token: it finds the whole token, and the token re-encoded.
        self._variable = {s.rsplit("-", 1)[1].encode(): v for v, s in self.secrets.items()}
        self._pattern = re.compile(b"|".join(self._variable))

    def scan(self, where: str, *values: object) -> None:
        self.searched[where.split(":", 1)[0]] += 1
        blob = b"\x00".join(text for value in values for text in _texts(value))
        for found in self._pattern.finditer(blob):
            context = blob[max(0, found.start() - 80) : found.end() + 20]
            self.hits.append(f"{self._variable[found.group()]} in {where}: ...{context!r}...")


def _texts(value: object) -> Iterator[bytes]:
    """The bytes to search in a value: its text, and a compressed blob's content as well."""
    if value is None:
        return
    if isinstance(value, memoryview):
        value = value.tobytes()
    if isinstance(value, bytes):
        yield value
        yield from _inflated(value)
        return
    if isinstance(value, str):
        yield value.encode()
    elif isinstance(value, dict | list):
        yield json.dumps(value, default=str).encode()
    else:
        yield str(value).encode()


def _inflated(blob: bytes) -> Iterator[bytes]:
    """A zlib or gzip blob's content (Dagster stores its snapshots zlib-compressed)."""
    for inflate in (zlib.decompress, gzip.decompress):
        try:
            content = inflate(blob)
        except (zlib.error, OSError, EOFError):  # not compressed that way
            continue
        yield content


def scan_rows(search: Search, where: str, rows: Rows) -> None:
    for table, row in rows:
        search.scan(f"{where}:{table}", *row)


def postgres_rows(url: str) -> Rows:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                sa.text(
                    "SELECT table_schema, table_name FROM information_schema.tables "
                    "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
                    "AND table_type = 'BASE TABLE'"
                )
            ).all()
            for schema, name in tables:
                for row in conn.execute(sa.text(f'SELECT * FROM "{schema}"."{name}"')):
                    yield name, tuple(row)
    finally:
        engine.dispose()


def sqlite_rows(path: Path) -> Rows:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for name in names:
            for row in conn.execute(f'SELECT * FROM "{name}"'):
                yield name, tuple(row)
    finally:
        conn.close()


def scan_file(search: Search, path: Path, base: Path) -> None:
    where = f"file:{path.relative_to(base)}"
    data = path.read_bytes()
    search.scan(where, data)
    if data.startswith(b"SQLite format 3\x00"):
        scan_rows(search, f"sqlite {path.name}", sqlite_rows(path))
    elif path.suffix == ".parquet":
        # Pages are compressed: read every text column, and the file's key-value metadata.
        frame = pl.read_parquet(path)
        text = [c for c, t in frame.schema.items() if not (t.is_numeric() or t.is_temporal())]
        search.searched["parquet text columns"] += len(text)
        for column in text:
            search.scan(f"parquet:{path.name}.{column}", repr(frame[column].to_list()))
        search.scan(f"parquet:{path.name} metadata", repr(pq.read_metadata(path).metadata))
