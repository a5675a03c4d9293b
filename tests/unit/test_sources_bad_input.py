"""Bad input at the source: a clear error naming file, row and rule, or a quarantine row."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from pipelines.bars.validate import validate_bars
from pipelines.config import ColumnMap, FileSourceConfig
from pipelines.data.normalise import SourceError
from pipelines.data.sources import FileBarSource
from pipelines.timeframes import Timeframe

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample" / "eqker_15min"
TF = Timeframe.parse("15m")
UNIVERSE = ["AAPL", "MSFT"]


def _aapl() -> pl.DataFrame:
    return pl.read_csv(SAMPLE / "AAPL_15min.csv", infer_schema=False)


def _source(directory: Path, **overrides: object) -> FileBarSource:
    cfg = {
        "path": str(directory),
        "pattern": "{symbol}_15min.csv",
        "format": "csv",
        "timezone": "America/New_York",
        "label": "end",
        **overrides,
    }
    return FileBarSource(FileSourceConfig(**cfg), TF)  # type: ignore[arg-type]


def _validate(raw: pl.DataFrame, universe: list[str] = UNIVERSE):  # type: ignore[no-untyped-def]
    result = validate_bars(raw, universe=universe, timeframe=TF, session="regular")
    assert result.rows_in == raw.height == result.rows_stored + result.rows_quarantined
    return result


def test_sample_file_is_read_as_utc_bar_starts(tmp_path: Path) -> None:
    _aapl().write_csv(tmp_path / "AAPL_15min.csv")
    raw = _source(tmp_path).read_file(tmp_path / "AAPL_15min.csv", "AAPL")
    # 09:45 New York (EST, UTC-5) bar END -> 09:30 start -> 14:30 UTC.
    assert raw["ts"][0] == datetime(2019, 1, 4, 14, 30, tzinfo=UTC)
    assert raw["open"][0] == 144.43
    result = _validate(raw)
    assert result.rows_quarantined == 0


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    _aapl().rename({"close": "Close"}).write_csv(tmp_path / "AAPL_15min.csv")
    with pytest.raises(
        SourceError, match=r"AAPL_15min.csv: column 'close' \(for close\) not found"
    ):
        _source(tmp_path).fetch(
            ["AAPL"], datetime(2019, 1, 1, tzinfo=UTC), datetime(2019, 3, 1, tzinfo=UTC), UNIVERSE
        )


def test_column_mapping_reads_any_naming(tmp_path: Path) -> None:
    renamed = _aapl().rename({"timestamp": "Date", "open": "O", "close": "Last", "volume": "Vol"})
    renamed.write_csv(tmp_path / "AAPL_15min.csv")
    columns = ColumnMap(timestamp="Date", open="O", close="Last", volume="Vol")
    raw = _source(tmp_path, columns=columns).read_file(tmp_path / "AAPL_15min.csv", "AAPL")
    assert raw["close"].to_list() == _aapl()["close"].cast(pl.Float64).to_list()


def test_wrong_types_are_quarantined_with_column_and_value(tmp_path: Path) -> None:
    df = _aapl().with_columns(
        close=pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("12,5")).otherwise("close"),
        volume=pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("lots")).otherwise("volume"),
        timestamp=pl.when(pl.int_range(pl.len()) == 7)
        .then(pl.lit("yesterday"))
        .otherwise("timestamp"),
    )
    df.write_csv(tmp_path / "AAPL_15min.csv")
    raw = _source(tmp_path).read_file(tmp_path / "AAPL_15min.csv", "AAPL")
    q = _validate(raw).quarantine
    assert q["source_row"].to_list() == [3, 5, 7]
    assert set(q["rule"]) == {"unparseable_value"}
    assert "column 'close' (close): cannot parse 12,5" in q["detail"][0]
    assert "column 'volume' (volume): cannot parse lots" in q["detail"][1]
    assert "column 'timestamp' (ts): cannot parse yesterday" in q["detail"][2]
    assert '"close":"12,5"' in q["raw"][0]


def test_nan_negative_prices_and_negative_volume(tmp_path: Path) -> None:
    df = _aapl().with_columns(
        open=pl.when(pl.int_range(pl.len()) == 1).then(pl.lit("NaN")).otherwise("open"),
        low=pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("-1.0")).otherwise("low"),
        volume=pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("-100")).otherwise("volume"),
    )
    df.write_csv(tmp_path / "AAPL_15min.csv")
    raw = _source(tmp_path).read_file(tmp_path / "AAPL_15min.csv", "AAPL")
    result = _validate(raw)
    assert dict(zip(result.quarantine["source_row"], result.quarantine["rule"], strict=True)) == {
        1: "missing_value",
        2: "nonpositive_price",
        4: "negative_volume",
    }


def test_naive_times_without_a_declared_zone_are_an_error(tmp_path: Path) -> None:
    _aapl().write_csv(tmp_path / "AAPL_15min.csv")
    with pytest.raises(SourceError, match="without a UTC offset; declare the zone"):
        _source(tmp_path, timezone=None).read_file(tmp_path / "AAPL_15min.csv", "AAPL")


def test_mixed_time_zones_are_an_error_naming_rows(tmp_path: Path) -> None:
    df = _aapl().with_columns(
        timestamp=pl.when(pl.int_range(pl.len()) == 10)
        .then(pl.col("timestamp") + "-05:00")
        .otherwise("timestamp")
    )
    df.write_csv(tmp_path / "AAPL_15min.csv")
    with pytest.raises(SourceError, match=r"mixes timestamps with a UTC offset \(row 10"):
        _source(tmp_path).read_file(tmp_path / "AAPL_15min.csv", "AAPL")


def test_offsets_are_honoured_without_a_declared_zone(tmp_path: Path) -> None:
    df = _aapl().with_columns(timestamp=pl.col("timestamp") + "-05:00")
    df.write_csv(tmp_path / "AAPL_15min.csv")
    raw = _source(tmp_path, timezone=None).read_file(tmp_path / "AAPL_15min.csv", "AAPL")
    assert raw["ts"][0] == datetime(2019, 1, 4, 14, 30, tzinfo=UTC)


def test_parquet_zone_conflicting_with_config_is_an_error(tmp_path: Path) -> None:
    df = _aapl().with_columns(
        pl.col("timestamp").str.to_datetime().dt.replace_time_zone("Europe/London")
    )
    df.write_parquet(tmp_path / "AAPL_15min.parquet")
    source = _source(tmp_path, pattern="{symbol}_15min.parquet", format="parquet")
    with pytest.raises(SourceError, match="is in time zone Europe/London but the source config"):
        source.read_file(tmp_path / "AAPL_15min.parquet", "AAPL")


def test_unsorted_and_duplicate_rows(tmp_path: Path) -> None:
    df = _aapl()
    shuffled = pl.concat([df.reverse(), df.slice(0, 3)])
    conflicting = df.slice(5, 1).with_columns(close=pl.lit("1.5"), low=pl.lit("1.0"))
    pl.concat([shuffled, conflicting]).write_csv(tmp_path / "AAPL_15min.csv")
    raw = _source(tmp_path).read_file(tmp_path / "AAPL_15min.csv", "AAPL")
    result = _validate(raw)
    assert result.by_reason == {"duplicate_conflict": 2, "duplicate_exact": 3}
    assert result.bars["ts"].is_sorted()
    assert result.rows_stored == df.height - 1


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    (tmp_path / "AAPL_15min.csv").write_text("")
    (tmp_path / "MSFT_15min.csv").write_text("timestamp,open,high,low,close,volume\n")
    source = _source(tmp_path)
    with pytest.raises(SourceError, match=r"AAPL_15min\.csv: the file is empty"):
        source.read_file(tmp_path / "AAPL_15min.csv", "AAPL")
    with pytest.raises(SourceError, match=r"MSFT_15min\.csv: the file has no rows"):
        source.read_file(tmp_path / "MSFT_15min.csv", "MSFT")


def test_truncated_parquet_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "AAPL_15min.parquet"
    _aapl().write_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    source = _source(tmp_path, pattern="{symbol}_15min.parquet", format="parquet")
    with pytest.raises(SourceError, match=r"AAPL_15min\.parquet: cannot be read as parquet"):
        source.read_file(path, "AAPL")


def test_symbol_outside_universe_is_quarantined(tmp_path: Path) -> None:
    multi = pl.concat(
        [_aapl().with_columns(sym=pl.lit("AAPL")), _aapl().head(4).with_columns(sym=pl.lit("ZZZZ"))]
    )
    multi.write_csv(tmp_path / "all.csv")
    source = _source(tmp_path, pattern="all.csv", columns=ColumnMap(symbol="sym"))
    raw = source.fetch(
        ["AAPL"], datetime(2019, 1, 1, tzinfo=UTC), datetime(2019, 3, 1, tzinfo=UTC), UNIVERSE
    )
    assert raw.height == multi.height
    result = _validate(raw)
    assert result.by_reason == {"symbol_not_in_universe": 4}
    assert result.quarantine["detail"][0] == "symbol ZZZZ is not in the universe"


def test_window_keeps_unparseable_rows_exactly_once(tmp_path: Path) -> None:
    df = _aapl().with_columns(
        timestamp=pl.when(pl.int_range(pl.len()) == 400).then(pl.lit("??")).otherwise("timestamp")
    )
    df.write_csv(tmp_path / "AAPL_15min.csv")
    source = _source(tmp_path)
    cut = datetime(2019, 1, 25, 5, tzinfo=UTC)
    jan = source.fetch(["AAPL"], datetime(2019, 1, 1, tzinfo=UTC), cut, UNIVERSE)
    feb = source.fetch(["AAPL"], cut, datetime(2019, 3, 1, tzinfo=UTC), UNIVERSE)
    assert jan.height + feb.height == df.height
    assert (jan["parse_error"].is_not_null().sum() + feb["parse_error"].is_not_null().sum()) == 1
