"""Sources of raw bars behind one interface.

A source returns a raw batch (:data:`~pipelines.data.schema.RAW_SCHEMA`) for a set of symbols and
a time window. Every row it read that belongs to the window is returned, including rows of
symbols outside the universe and rows it could not parse, so that validation can account for
them.
"""

from __future__ import annotations

import difflib
import io
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import polars as pl
from upath import UPath

from pipelines.bars.calendar import NEW_YORK, sessions_between
from pipelines.config import FileSourceConfig
from pipelines.data.normalise import SourceError, normalise_frame
from pipelines.data.object_store import LocationError, check_location, is_remote, local_path
from pipelines.data.schema import RAW_SCHEMA
from pipelines.timeframes import Timeframe

type SourcePath = Path | UPath
"""A source file: a local path, or an object in a bucket (``s3://bucket/prefix/AAPL.csv``)."""


class BarSource(Protocol):
    """What the ingestion needs from a market-data source."""

    @property
    def name(self) -> str:
        """A short stable name, stored with every bar and quarantine row."""
        ...

    def fetch(
        self, symbols: Sequence[str], start: datetime, end: datetime, universe: Sequence[str]
    ) -> pl.DataFrame:
        """Raw rows of ``symbols`` with bar start in ``[start, end)`` (UTC). Rows of symbols
        outside ``universe`` that the source holds in the same files are returned too."""
        ...

    @property
    def adjustment(self) -> str:
        """How prices are adjusted (``raw``, ``split``, ``total_return``, ``unknown``, or the
        vendor's own name such as Alpaca's ``all``), recorded with every ingestion."""
        ...

    def file_names(self, symbols: Sequence[str] | None) -> list[str] | None:
        """The names of the files a fetch of ``symbols`` reads (every file, with None), as
        quarantine rows record them; None for a source without files."""
        ...

    def covered_until(self, as_of: datetime) -> datetime:
        """The instant up to which the source's bars are final as of ``as_of``: bars ending
        after it may still be open or unpublished (a delayed feed) and are not recorded as
        fetched."""
        ...


def in_window(
    frame: pl.DataFrame,
    start: datetime,
    end: datetime,
    history: tuple[datetime, datetime | None] | None = None,
) -> pl.DataFrame:
    """Rows whose bar start lies in ``[start, end)``. A row whose time could not be parsed
    belongs to the window of the nearest parsed row before it in the file (after it, for a
    file that starts with such rows), so that it is counted exactly once. With ``history``
    (the first and the end instant ever ingested, UTC), such a row whose neighbour lies outside
    it is placed at the nearest edge instead, so that some window does fetch it."""
    anchor = pl.col("ts").forward_fill().backward_fill().over("source_file")
    if history is not None:
        lo, hi = history
        clamped = anchor.clip(lower_bound=lo)
        if hi is not None:
            clamped = clamped.clip(upper_bound=hi - timedelta(microseconds=1))
        anchor = pl.when(pl.col("ts").is_null()).then(clamped).otherwise(pl.col("ts"))
    return frame.filter((anchor >= start) & (anchor < end))


def _parts(path: SourcePath) -> tuple[str, ...]:
    return tuple(path.parts)


def history_bounds(first: date, last: date | None) -> tuple[datetime, datetime | None]:
    """The instants a universe's ``history_start`` .. ``history_end`` (New York dates,
    inclusive) span: from midnight of the first to midnight after the last."""
    ny = ZoneInfo(NEW_YORK)
    lo = datetime.combine(first, time(0), ny).astimezone(UTC)
    if last is None:
        return lo, None
    return lo, datetime.combine(last + timedelta(days=1), time(0), ny).astimezone(UTC)


class FileBarSource:
    """Bars from a directory of CSV or Parquet files, as described by :class:`FileSourceConfig`.

    Example: a directory with ``AAPL_15min.csv`` and ``MSFT_15min.csv``, ``pattern:
    "{symbol}_15min.csv"``, ``format: csv``, ``timezone: America/New_York``, ``label: end``.

    The directory may be a prefix in a bucket, ``path: s3://bucket/prefix``: its files are
    listed and read through fsspec with ``storage_options`` (the credentials and endpoint,
    from the environment: :func:`pipelines.data.object_store.storage_options`).
    """

    def __init__(
        self,
        config: FileSourceConfig,
        timeframe: Timeframe,
        *,
        root: Path | None = None,
        history: tuple[date, date | None] | None = None,
        calendar: str = "XNYS",
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.timeframe = timeframe
        self.history = None if history is None else history_bounds(*history)
        self.calendar = calendar
        try:
            check_location(config.path)
        except LocationError as exc:
            raise SourceError(f"source path: {exc}") from None
        self.directory: SourcePath = (
            UPath(config.path.rstrip("/"), **dict(storage_options or {}))
            if is_remote(config.path)
            else local_path(config.path, root)
        )
        if not self.directory.is_dir():
            raise SourceError(f"source directory {self.directory} does not exist")

    @property
    def name(self) -> str:
        return f"files:{self.directory.name}"

    @property
    def adjustment(self) -> str:
        """How the files' prices are adjusted, as declared in the source config."""
        return self.config.adjustment

    def files(self, symbols: Sequence[str] | None = None) -> list[tuple[SourcePath, str | None]]:
        """The files to read, with the symbol each holds (None for multi-symbol files)."""
        pattern = self.config.pattern
        if "{symbol}" in pattern:
            head, tail = pattern.split("{symbol}", 1)
            rx = re.compile(
                "^" + re.escape(head) + r"(?P<s>[A-Za-z0-9.\-]+)" + re.escape(tail) + "$"
            )
            found: list[tuple[SourcePath, str | None]] = []
            for p in sorted(self.directory.iterdir(), key=_parts):
                m = rx.match(p.name)
                if m and (symbols is None or m["s"] in symbols):
                    found.append((p, m["s"]))
            return found
        return [(p, None) for p in sorted(self.directory.glob(pattern), key=_parts)]

    def read_file(self, path: SourcePath, symbol: str | None) -> pl.DataFrame:
        """One file as a raw batch (all rows)."""
        fmt = self.config.file_format
        data: Path | io.BytesIO
        if isinstance(path, Path):
            data = path
        else:
            try:
                data = io.BytesIO(path.read_bytes())
            except OSError as exc:
                raise SourceError(
                    f"{path}: cannot be fetched ({str(exc).splitlines()[0][:160]}); check that "
                    "it exists, the endpoint (QUANTDAG_S3_ENDPOINT_URL) and the credentials "
                    "(QUANTDAG_S3_ACCESS_KEY_ID / QUANTDAG_S3_SECRET_ACCESS_KEY or AWS_...)"
                ) from None
        try:
            df = pl.read_csv(data, infer_schema=False) if fmt == "csv" else pl.read_parquet(data)
        except pl.exceptions.NoDataError:
            raise SourceError(f"{path}: the file is empty") from None
        except (OSError, pl.exceptions.ComputeError, pl.exceptions.PolarsError) as exc:
            suffix = path.suffix.lower().lstrip(".")
            if suffix in ("csv", "parquet") and suffix != fmt:
                raise SourceError(
                    f"{path}: the source reads {fmt} but the file is .{suffix}: set "
                    f"`format: {suffix}` in the source config (or remove `format:`)"
                ) from None
            raise SourceError(
                f"{path}: cannot be read as {fmt} ({str(exc).splitlines()[0][:160]}); the file "
                "may be truncated or of another format: fetch it again or remove it"
            ) from None
        if df.schema.get(self.config.columns.symbol or "", None) == pl.Categorical:
            df = df.with_columns(pl.col(self.config.columns.symbol).cast(pl.String))  # type: ignore[arg-type]
        try:
            return normalise_frame(
                df,
                self.config.columns,
                timezone=self.config.timezone,
                label=self.config.label,
                timeframe=self.timeframe,
                source=self.name,
                source_file=str(path.name),
                symbol=symbol,
                timestamp_format=self.config.timestamp_format,
                adjustment=self.config.adjustment,
            )
        except SourceError as exc:
            raise SourceError(f"{self.directory}/{exc}") from None

    def file_names(self, symbols: Sequence[str] | None) -> list[str]:
        return [p.name for p, _ in self.files(symbols)]

    def covered_until(self, as_of: datetime) -> datetime:
        """Bars that have ended by ``as_of`` are final. Intraday: bars starting before
        ``as_of`` minus the bar length (a file written mid-bar holds that bar's partial
        values). Daily: sessions closed by ``as_of``."""
        if not self.timeframe.is_daily:
            return as_of - self.timeframe.duration
        ny = as_of.astimezone(ZoneInfo(NEW_YORK))
        midnight = datetime.combine(ny.date(), time(0), ZoneInfo(NEW_YORK)).astimezone(UTC)
        today = sessions_between(self.calendar, ny.date(), ny.date()).frame
        if today.height and as_of >= today["close"][0]:
            return as_of
        return midnight

    def _require_files(
        self, files: list[tuple[SourcePath, str | None]], symbols: Sequence[str]
    ) -> None:
        """Raise unless every symbol has its file (per-symbol patterns only): a missing file
        would otherwise count as a symbol with no bars and be recorded as covered."""
        if "{symbol}" not in self.config.pattern:
            return
        have = {s for _, s in files}
        missing = [s for s in symbols if s not in have]
        if not missing:
            return
        by_lower = {p.name.lower(): p.name for p in self.directory.iterdir()}
        expected = [self.config.pattern.replace("{symbol}", s) for s in missing]
        close = {
            e: by_lower[m[0]]
            for e in expected
            if (m := difflib.get_close_matches(e.lower(), list(by_lower), n=1, cutoff=0.8))
        }
        hint = "".join(f"; {e!r} not found, {c!r} is" for e, c in close.items())
        raise SourceError(
            f"{self.directory}: no file for {', '.join(missing)} (expected "
            f"{', '.join(expected[:5])}{' ...' if len(expected) > 5 else ''}){hint}. Add the "
            "files, fix their names (the pattern is case-sensitive), or remove the symbols "
            "from the universe"
        )

    def fetch(
        self, symbols: Sequence[str], start: datetime, end: datetime, universe: Sequence[str]
    ) -> pl.DataFrame:
        wanted = set(symbols)
        outside = set(universe)
        frames = []
        files = self.files(symbols)
        self._require_files(files, symbols)
        for path, symbol in files:
            raw = in_window(self.read_file(path, symbol), start, end, self.history)
            if symbol is None:
                raw = raw.filter(
                    pl.col("symbol").is_in(list(wanted))
                    | ~pl.col("symbol").is_in(list(outside))
                    | pl.col("symbol").is_null()
                )
            frames.append(raw)
        if not frames:
            return pl.DataFrame(schema=RAW_SCHEMA)
        return pl.concat(frames)

    def symbol_spans(self, symbols: Sequence[str]) -> dict[str, tuple[datetime, datetime]]:
        """First and last parsed bar start (UTC) of each of ``symbols`` in the files, within
        the history when the source has one. Plans which partitions hold data, and tells a
        hole (a symbol whose span covers a partition without a bar in it) however the
        partitions were run: a store only knows the partitions ingested so far."""
        in_history = pl.col("ts").is_not_null()
        if self.history is not None:  # rows outside the history are never ingested
            first_ingested, end_ingested = self.history
            in_history &= pl.col("ts") >= first_ingested
            if end_ingested is not None:
                in_history &= pl.col("ts") < end_ingested
        spans: dict[str, tuple[datetime, datetime]] = {}
        for path, symbol in self.files(symbols):
            frame = self.read_file(path, symbol).filter(
                in_history & pl.col("symbol").is_in(list(symbols))
            )
            for sym, first, last in (
                frame.group_by("symbol")
                .agg(pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"))
                .iter_rows()
            ):
                known = spans.get(sym, (first, last))
                spans[sym] = (min(known[0], first), max(known[1], last))
        return spans
