"""The data layer's edges: any history (the calendar from the data, not the clock), daily bars,
timestamps in other forms, files missing or unreadable, values no market produces, and
configuration checked when it loads."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import exchange_calendars as xcals
import exchange_calendars.exchange_calendar as xcal_module
import pandas as pd
import polars as pl
import pytest

from pipelines.bars.calendar import exchange_calendar, sessions_between
from pipelines.bars.validate import validate_bars
from pipelines.config import (
    ConfigError,
    FileSourceConfig,
    UniverseConfig,
    ValidationConfig,
    load_settings,
)
from pipelines.data.ingest import ingest_window
from pipelines.data.normalise import SourceError
from pipelines.data.sources import FileBarSource
from pipelines.data.store import BarStore
from pipelines.timeframes import Timeframe

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
DAILY = Timeframe.parse("1d")
M15 = Timeframe.parse("15m")
VENDOR_COLUMNS = {
    "timestamp": "Date",
    "open": "Open",
    "high": "High",
    "low": "Low",
    "close": "Close",
    "volume": "Volume",
}
"""The column names of Yahoo- and Google-style daily CSVs."""
ALL_TIME = (datetime(1980, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))


def _universe(
    symbols: list[str], timeframe: str = "15m", start: str = "1985-01-01"
) -> UniverseConfig:
    return UniverseConfig(
        name="edges",
        timeframe=timeframe,
        history_start=date.fromisoformat(start),
        symbols=tuple({"symbol": s} for s in symbols),  # type: ignore[arg-type]
    )


def _store(tmp_path: Path) -> BarStore:
    store = BarStore(f"sqlite:///{tmp_path / 't.db'}")
    store.migrate()
    return store


def _csv(folder: Path, name: str, header: str, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _source(folder: Path, tf: Timeframe = M15, **overrides: object) -> FileBarSource:
    config = {"path": str(folder), "pattern": "{symbol}.csv", "label": "end", **overrides}
    return FileBarSource(FileSourceConfig.model_validate(config), tf)


def _validated(source: FileBarSource, symbols: list[str], tf: Timeframe = M15):  # type: ignore[no-untyped-def]
    raw = source.fetch(symbols, *ALL_TIME, symbols)
    return validate_bars(raw, universe=symbols, timeframe=tf, session="regular")


# --- the calendar comes from the data, never from the clock --------------------------------


def _fake_today(monkeypatch: pytest.MonkeyPatch, today: str) -> None:
    """exchange_calendars' default window, "20 years before today to a year after", is
    computed from these two module values at call time."""
    now = pd.Timestamp(today)
    monkeypatch.setattr(xcal_module, "GLOBAL_DEFAULT_START", now - pd.DateOffset(years=20))
    monkeypatch.setattr(xcal_module, "GLOBAL_DEFAULT_END", now + pd.DateOffset(years=1))
    sessions_between.cache_clear()
    exchange_calendar.cache_clear()


def test_sessions_are_the_same_whatever_today_is(monkeypatch: pytest.MonkeyPatch) -> None:
    first, last = date(2004, 8, 16), date(2004, 8, 20)
    frames = []
    for today in ("2026-12-02", "2046-06-30", "2005-01-03"):
        _fake_today(monkeypatch, today)
        frames.append(sessions_between("XNYS", first, last).frame)
    assert frames[0].height == 5 and frames[0]["session_date"][0] == first
    assert frames[0].equals(frames[1]) and frames[0].equals(frames[2])
    # Canary: built without bounds (as before), the answer depends on the faked day.
    _fake_today(monkeypatch, "2026-12-02")
    assert xcals.exchange_calendar_xnys.XNYSExchangeCalendar().first_session > pd.Timestamp(first)
    _fake_today(monkeypatch, "2005-01-03")
    assert xcals.exchange_calendar_xnys.XNYSExchangeCalendar().first_session < pd.Timestamp(first)


def test_bars_of_the_1980s_to_2000s_are_stored_and_holidays_refused(tmp_path: Path) -> None:
    rows = [
        "1987-10-19,283.75,283.75,221.75,224.84,604300000",  # Black Monday: a session
        "1994-04-27,100,101,99,100.5,1000",  # NYSE closed (President Nixon's funeral)
        "1999-12-31,100,101,99,100.5,1000",
        "2001-09-11,100,101,99,100.5,1000",  # closed after the attacks
        "2004-08-19,100.01,104.06,95.96,100.335,44659000",  # Google's first session
    ]
    _csv(tmp_path, "OLD.csv", "timestamp,open,high,low,close,volume", rows)
    result = _validated(_source(tmp_path, DAILY), ["OLD"], DAILY)
    stored = result.bars["ts"].dt.convert_time_zone("America/New_York").dt.date().to_list()
    assert stored == [date(1987, 10, 19), date(1999, 12, 31), date(2004, 8, 19)]
    assert result.quarantine["rule"].to_list() == ["not_a_session", "not_a_session"]
    assert result.quarantine["detail"][0] == "1994-04-27 is not a trading session"
    # Stored with the session's open, 09:30 New York (EDT then), as an aggregated 1d bar.
    assert result.bars["ts"][0] == datetime(1987, 10, 19, 13, 30, tzinfo=UTC)


def test_intraday_bars_of_1995_are_stored(tmp_path: Path) -> None:
    rows = [f"1995-03-01 {h}:{m:02d},10,10.5,9.5,10.2,100" for h in (9, 10) for m in (45,)]
    _csv(tmp_path, "OLD.csv", "timestamp,open,high,low,close,volume", rows)
    result = _validated(_source(tmp_path, timezone="America/New_York"), ["OLD"])
    assert result.rows_stored == 2 and result.rows_quarantined == 0


def test_a_range_the_calendar_cannot_describe_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"XNYS cannot describe 1600\.\.1600"):
        sessions_between("XNYS", date(1600, 1, 3), date(1600, 1, 4))


# --- daily bars ---------------------------------------------------------------------------


def test_yahoo_style_daily_csv_with_adj_close_is_total_return(tmp_path: Path) -> None:
    header = "Date,Open,High,Low,Close,Adj Close,Volume"
    rows = [
        "2013-02-08,45.07,45.35,45.0,45.08,22.54,1824755",
        "2013-02-11,45.17,45.18,44.45,44.6,22.3,2915405",
    ]
    _csv(tmp_path, "A.csv", header, rows)
    cols = VENDOR_COLUMNS
    with pytest.raises(SourceError, match=r"adjusted close 'Adj Close'.*adjustment: total_return"):
        _source(tmp_path, DAILY, columns=cols).fetch(["A"], *ALL_TIME, ["A"])
    split = _validated(_source(tmp_path, DAILY, columns=cols, adjustment="split"), ["A"], DAILY)
    assert split.bars["close"].to_list() == [45.08, 44.6]
    total = _source(
        tmp_path, DAILY, columns={**cols, "adj_close": "Adj Close"}, adjustment="total_return"
    )
    bars = _validated(total, ["A"], DAILY).bars
    assert bars["close"].to_list() == pytest.approx([22.54, 22.3])
    assert bars["open"][0] == pytest.approx(45.07 * 22.54 / 45.08)
    with pytest.raises(ValueError, match="declare `adjustment: total_return`"):
        FileSourceConfig(
            path=".",
            pattern="{symbol}.csv",
            label="end",
            columns={**cols, "adj_close": "Adj Close"},
        )  # type: ignore[arg-type]


def test_the_bundled_daily_sample_ingests_whole(tmp_path: Path) -> None:
    settings, universe = load_settings(ROOT / "config" / "daily" / "settings.yaml")
    source = FileBarSource(
        settings.environments["local"].source, universe.base_timeframe, root=ROOT
    )  # type: ignore[arg-type]
    store = _store(tmp_path)
    window = (datetime(2018, 1, 1, 5, tzinfo=UTC), datetime(2019, 1, 1, 5, tzinfo=UTC))
    report = ingest_window(
        source,
        store,
        universe,
        ValidationConfig(),
        window,
        as_of=datetime(2026, 1, 1, tzinfo=UTC),
        batch="2018",
    )
    in_2018 = sum(
        pl.read_csv(p)["timestamp"].str.starts_with("2018").sum()
        for p in (ROOT / "data" / "sample" / "eqker_daily").glob("*_daily.csv")
    )
    assert report.rows_in == report.rows_stored == in_2018 > 5_900
    assert report.missing_bars == 0


def test_a_date_only_file_in_an_intraday_source_says_so(tmp_path: Path) -> None:
    _csv(tmp_path, "A.csv", "timestamp,open,high,low,close,volume", ["2019-01-04,1,2,0.5,1.5,10"])
    with pytest.raises(SourceError, match=r"date without a time.*timeframe: 1d"):
        _source(tmp_path, timezone="America/New_York").fetch(["A"], *ALL_TIME, ["A"])


def test_day_long_minute_timeframes_are_refused() -> None:
    with pytest.raises(ValueError, match="write '1d' for daily bars"):
        Timeframe.parse("1440m")


# --- timestamps in other forms ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fmt"),
    [
        ("01/04/2019 09:45", "%m/%d/%Y %H:%M"),
        ("1546613100", "epoch_s"),
        ("09:45 AM 2019-01-04", "%I:%M %p %Y-%m-%d"),
    ],
)
def test_a_file_of_unparseable_timestamps_is_refused_then_read_with_its_format(
    tmp_path: Path, value: str, fmt: str
) -> None:
    _csv(tmp_path, "A.csv", "timestamp,open,high,low,close,volume", [f"{value},1,2,0.5,1.5,10"])
    with pytest.raises(
        SourceError, match=r"A.csv: none of its 1 timestamps.*accepted forms: YYYY-MM-DD HH:MM"
    ):
        _source(tmp_path, timezone="America/New_York").fetch(["A"], *ALL_TIME, ["A"])
    read = _source(tmp_path, timezone="America/New_York", timestamp_format=fmt)
    bars = _validated(read, ["A"]).bars
    assert bars["ts"].to_list() == [datetime(2019, 1, 4, 14, 30, tzinfo=UTC)]


def test_an_offset_contradicting_the_declared_zone_is_refused(tmp_path: Path) -> None:
    header = "timestamp,open,high,low,close,volume"
    _csv(tmp_path, "A.csv", header, ["2019-01-04T14:45:00Z,1,2,0.5,1.5,10"])
    with pytest.raises(SourceError, match=r"contradicts the declared `timezone: America/New_York`"):
        _source(tmp_path, timezone="America/New_York").fetch(["A"], *ALL_TIME, ["A"])
    assert _validated(_source(tmp_path), ["A"]).rows_stored == 1
    _csv(tmp_path, "A.csv", header, ["2019-01-04T09:45:00-05:00,1,2,0.5,1.5,10"])
    assert _validated(_source(tmp_path, timezone="America/New_York"), ["A"]).rows_stored == 1


def test_dst_gaps_and_overlaps_are_named(tmp_path: Path) -> None:
    rows = [
        "2019-03-08 15:45,1,2,0.5,1.5,10",
        "2019-03-10 02:30,1,2,0.5,1.5,10",
        "2019-11-03 01:30,1,2,0.5,1.5,10",
    ]
    _csv(tmp_path, "A.csv", "timestamp,open,high,low,close,volume", rows)
    q = _validated(_source(tmp_path, timezone="America/New_York"), ["A"]).quarantine
    assert q["rule"].to_list() == ["unparseable_value", "unparseable_value"]
    assert "DST gap" in q["detail"][0] and "DST overlap" in q["detail"][1]


# --- files missing or unreadable ----------------------------------------------------------


def test_a_missing_file_is_an_error_and_never_covered(tmp_path: Path) -> None:
    src = tmp_path / "src"
    header = "timestamp,open,high,low,close,volume"
    _csv(src, "MSFT_15min.csv", header, ["2019-01-04 09:45,1,2,0.5,1.5,10"])
    _csv(src, "aapl_15min.csv", header, ["2019-01-04 09:45,1,2,0.5,1.5,10"])
    source = FileBarSource(
        FileSourceConfig(
            path=str(src), pattern="{symbol}_15min.csv", label="end", timezone="America/New_York"
        ),
        M15,
    )
    store = _store(tmp_path)
    universe = _universe(["AAPL", "MSFT"], start="2019-01-01")
    window = (datetime(2019, 1, 1, 5, tzinfo=UTC), datetime(2019, 2, 1, 5, tzinfo=UTC))
    with pytest.raises(SourceError, match=r"no file for AAPL.*'aapl_15min.csv' is"):
        ingest_window(
            source,
            store,
            universe,
            ValidationConfig(),
            window,
            as_of=datetime(2026, 1, 1, tzinfo=UTC),
            batch="jan",
        )
    assert store.covered(source=source.name, timeframe="15m", symbols=["AAPL", "MSFT"]) in (
        {},
        {"AAPL": [], "MSFT": []},
    )
    assert store.count_bars() == 0


def test_a_csv_read_as_parquet_is_told_to_set_format(tmp_path: Path) -> None:
    _csv(
        tmp_path,
        "A.bars",
        "timestamp,open,high,low,close,volume",
        ["2019-01-04 09:45,1,2,0.5,1.5,10"],
    )
    (tmp_path / "A.bars").rename(tmp_path / "A.parquet")
    _csv(
        tmp_path / "csv",
        "A.csv",
        "timestamp,open,high,low,close,volume",
        ["2019-01-04 09:45,1,2,0.5,1.5,10"],
    )
    with pytest.raises(SourceError, match="cannot be read as parquet"):
        _source(tmp_path, pattern="{symbol}.parquet", timezone="America/New_York").fetch(
            ["A"], *ALL_TIME, ["A"]
        )
    # The format follows the pattern's extension when not given.
    assert FileSourceConfig(path=".", pattern="{symbol}.csv", label="end").file_format == "csv"
    with pytest.raises(ValueError, match=r"names \.csv files but format is .parquet."):
        FileSourceConfig(path=".", pattern="{symbol}.csv", label="end", format="parquet")


# --- values no market produces ------------------------------------------------------------


def test_non_finite_and_absurd_values_are_quarantined(tmp_path: Path) -> None:
    rows = [
        "2019-01-04 09:45,1,2,0.5,1.5,10",
        "2019-01-04 10:00,1,2,0.5,1.5,inf",
        "2019-01-04 10:15,1,1e300,0.5,1.5,10",
        "2019-01-04 10:30,1,2,1e-320,1.5,10",
        "2019-01-04 10:45,1,2,0.5,1.5,1e15",
        "2019-01-04 11:00,1,2,0.5,inf,10",
    ]
    _csv(tmp_path, "A.csv", "timestamp,open,high,low,close,volume", rows)
    result = _validated(_source(tmp_path, timezone="America/New_York"), ["A"])
    assert result.rows_stored == 1
    assert result.quarantine["rule"].to_list() == [
        "nonfinite_value",
        "implausible_value",
        "implausible_value",
        "implausible_value",
        "nonfinite_value",
    ]


# --- configuration checked when it loads --------------------------------------------------


@pytest.mark.parametrize(
    ("where", "old", "new", "message"),
    [
        (
            "universe.yaml",
            "calendar: XNYS",
            "calendar: NYSEX",
            r"(?s)universe.yaml.*calendar.*'NYSEX'.*XNYS",
        ),
        (
            "settings.yaml",
            "timezone: America/New_York",
            "timezone: America/NewYork",
            r"(?s)settings.yaml.*environments.local.source.files.timezone.*America/New_York",
        ),
        (
            "settings.yaml",
            "database_url: sqlite:///.quantdag/trading.db",
            "database_url: notaurl",
            r"(?s)settings.yaml.*environments.local.database_url.*'notaurl' is not a database URL",
        ),
    ],
)
def test_config_mistakes_are_caught_when_it_loads(
    tmp_path: Path, where: str, old: str, new: str, message: str
) -> None:
    for name in ("settings.yaml", "universe.yaml"):
        text = (ROOT / "config" / name).read_text()
        (tmp_path / name).write_text(text.replace(old, new) if name == where else text)
    assert (tmp_path / where).read_text() != (ROOT / "config" / where).read_text()
    with pytest.raises(ConfigError, match=message) as err:
        load_settings(tmp_path / "settings.yaml")
    assert "Traceback" not in str(err.value)


# --- coverage ends where the source's bars are final ---------------------------------------


class DelayedSource(FileBarSource):
    """A file source whose newest hour is not final yet (as a delayed feed's)."""

    def covered_until(self, as_of: datetime) -> datetime:
        return as_of - timedelta(hours=1)


def test_coverage_ends_at_the_last_final_bar(tmp_path: Path) -> None:
    rows = [
        f"2019-01-04 {h:02d}:{m:02d},1,2,0.5,1.5,10" for h in range(10, 16) for m in (0, 15, 30, 45)
    ]
    _csv(tmp_path / "src", "A.csv", "timestamp,open,high,low,close,volume", rows)
    cfg = FileSourceConfig(
        path=str(tmp_path / "src"), pattern="{symbol}.csv", label="end", timezone="America/New_York"
    )
    source = DelayedSource(cfg, M15)
    store = _store(tmp_path)
    as_of = datetime(2019, 1, 4, 20, 0, tzinfo=UTC)  # 15:00 New York
    window = (datetime(2019, 1, 1, 5, tzinfo=UTC), datetime(2019, 2, 1, 5, tzinfo=UTC))
    ingest_window(
        source,
        store,
        _universe(["A"], start="2019-01-01"),
        ValidationConfig(),
        window,
        as_of=as_of,
        batch="jan",
    )
    covered = store.covered(source=source.name, timeframe="15m", symbols=["A"])
    assert max(e for _, e in covered["A"]) == datetime(2019, 1, 4, 19, 0, tzinfo=UTC)
    assert store.read_bars(timeframe="15m", start=window[0], end=window[1])["ts"].max() < datetime(
        2019, 1, 4, 19, 0, tzinfo=UTC
    )


def test_vendor_daily_conventions_are_declared_not_guessed(tmp_path: Path) -> None:
    """Google-Finance-style dates (19-Aug-04) and an index without volume: each convention is
    declared in the source config, and what is not declared is refused with the fix."""
    header = "Date,Open,High,Low,Close,Volume"
    _csv(tmp_path, "GOOG.csv", header, ["19-Aug-04,100.01,104.06,95.96,100.335,44659000"])
    cols = VENDOR_COLUMNS
    with pytest.raises(SourceError, match="timestamp_format"):
        _source(tmp_path, DAILY, columns=cols).fetch(["GOOG"], *ALL_TIME, ["GOOG"])
    read = _source(tmp_path, DAILY, columns=cols, timestamp_format="%d-%b-%y", adjustment="raw")
    bars = _validated(read, ["GOOG"], DAILY).bars
    assert bars["ts"].to_list() == [datetime(2004, 8, 19, 13, 30, tzinfo=UTC)]


def test_daily_labels_cut_at_the_close_are_refused_when_the_config_loads(tmp_path: Path) -> None:
    for name in ("settings.yaml", "universe.yaml"):
        text = (ROOT / "config" / "daily" / name).read_text()
        (tmp_path / name).write_text(
            text.replace("cut_at_session_close: false", "cut_at_session_close: true")
        )
    with pytest.raises(ConfigError, match="cut_at_session_close: false"):
        load_settings(tmp_path / "settings.yaml")


def test_a_file_without_any_timestamp_value_is_refused(tmp_path: Path) -> None:
    _csv(tmp_path, "A.csv", "timestamp,open,high,low,close,volume", [",1,2,0.5,1.5,10"] * 3)
    with pytest.raises(SourceError, match=r"A.csv: none of its 3 rows has a value"):
        _source(tmp_path, DAILY).fetch(["A"], *ALL_TIME, ["A"])


def test_unparseable_rows_next_to_rows_before_the_history_are_still_fetched(
    tmp_path: Path,
) -> None:
    """A row without a parsed time joins its neighbour's window; when that neighbour lies
    before ``history_start`` (never fetched), the row joins the first window instead."""
    rows = [
        "2018-12-31 15:45,1,2,0.5,1.5,10",
        "garbage,1,2,0.5,1.5,10",
        "2019-01-04 09:45,1,2,0.5,1.5,10",
    ]
    _csv(tmp_path, "A.csv", "timestamp,open,high,low,close,volume", rows)
    cfg = FileSourceConfig(
        path=str(tmp_path), pattern="{symbol}.csv", label="end", timezone="America/New_York"
    )
    jan = (datetime(2019, 1, 1, 5, tzinfo=UTC), datetime(2019, 2, 1, 5, tzinfo=UTC))
    bounded = FileBarSource(cfg, M15, history=(date(2019, 1, 2), None))
    assert bounded.fetch(["A"], *jan, ["A"])["source_row"].to_list() == [1, 2]
    # Canary: without the history, the row goes with its 2018 neighbour, a window never run.
    assert FileBarSource(cfg, M15).fetch(["A"], *jan, ["A"])["source_row"].to_list() == [2]


def test_daily_bars_stamped_at_utc_midnight_keep_their_written_session(tmp_path: Path) -> None:
    """Tiingo-style ``2019-01-03T00:00:00.000Z`` is the session of 2019-01-03, although it is
    19:00 on the 2nd in New York; so are epoch times of UTC midnight."""
    rows = [
        "2019-01-03T00:00:00.000Z,1,2,0.5,1.5,10",
        "2019-01-04T00:00:00.000Z,1,2,0.5,1.5,10",
        "2019-01-07T00:00:00Z,1,2,0.5,1.5,10",
    ]
    _csv(tmp_path, "A.csv", "timestamp,open,high,low,close,volume", rows)
    result = _validated(_source(tmp_path, DAILY), ["A"], DAILY)
    dates = result.bars["ts"].dt.convert_time_zone("America/New_York").dt.date().to_list()
    assert dates == [date(2019, 1, 3), date(2019, 1, 4), date(2019, 1, 7)]
    assert result.rows_quarantined == 0
    _csv(
        tmp_path / "e",
        "A.csv",
        "timestamp,open,high,low,close,volume",
        ["1546473600,1,2,0.5,1.5,10"],
    )  # 2019-01-03 00:00 UTC
    epoch = _validated(_source(tmp_path / "e", DAILY, timestamp_format="epoch_s"), ["A"], DAILY)
    assert epoch.bars["ts"].to_list() == [datetime(2019, 1, 3, 14, 30, tzinfo=UTC)]


def test_a_daily_row_written_before_its_close_is_not_covered(tmp_path: Path) -> None:
    """A vendor file written at 13:00 holds the session under way with partial values: it is
    neither stored nor recorded as fetched until the close has passed."""
    rows = ["2019-01-03,10,10.5,9.5,10.2,100", "2019-01-04,10,10.2,9.9,10.1,5"]
    _csv(tmp_path / "src", "A.csv", "timestamp,open,high,low,close,volume", rows)
    source = _source(tmp_path / "src", DAILY)
    noon = datetime(2019, 1, 4, 18, 0, tzinfo=UTC)  # 13:00 New York
    assert source.covered_until(noon) == datetime(2019, 1, 4, 5, 0, tzinfo=UTC)
    after_close = datetime(2019, 1, 4, 21, 5, tzinfo=UTC)
    assert source.covered_until(after_close) == after_close
    store = _store(tmp_path)
    universe = _universe(["A"], timeframe="1d", start="2019-01-01")
    year = (datetime(2019, 1, 1, 5, tzinfo=UTC), datetime(2020, 1, 1, 5, tzinfo=UTC))
    first = ingest_window(source, store, universe, ValidationConfig(), year, as_of=noon, batch="y")
    assert first.rows_stored == 1
    _csv(
        tmp_path / "src",
        "A.csv",
        "timestamp,open,high,low,close,volume",
        [rows[0], "2019-01-04,10,12,8,11.7,900"],
    )
    ingest_window(source, store, universe, ValidationConfig(), year, as_of=after_close, batch="y")
    bars = store.read_bars(timeframe="1d", start=year[0], end=year[1])
    assert bars["close"].to_list() == [10.2, 11.7]


def test_a_symbol_missing_from_a_partition_between_its_bars_fails_the_month(
    tmp_path: Path,
) -> None:
    """A month where a symbol with bars before and after it has none is a hole, and the
    blocking ``sessions_have_bars`` fails; a symbol listed later is not a hole."""
    from pipelines.bars.checks import ingest_checks
    from pipelines.data.ingest import IngestReport

    src = tmp_path / "src"
    header = "timestamp,open,high,low,close,volume"
    _csv(
        src, "A.csv", header, ["2019-01-04 09:45,1,2,0.5,1.5,10", "2019-03-04 09:45,1,2,0.5,1.5,10"]
    )
    _csv(
        src, "B.csv", header, ["2019-02-04 09:45,1,2,0.5,1.5,10", "2019-03-04 09:45,1,2,0.5,1.5,10"]
    )
    store = _store(tmp_path)
    source = _source(src, timezone="America/New_York")
    universe = _universe(["A", "B"], start="2019-01-01")
    whole = (datetime(2019, 1, 1, 5, tzinfo=UTC), datetime(2019, 4, 1, 4, tzinfo=UTC))
    ingest_window(
        source,
        store,
        universe,
        ValidationConfig(),
        whole,
        as_of=datetime(2026, 1, 1, tzinfo=UTC),
        batch="q1",
    )
    feb = (datetime(2019, 2, 1, 5, tzinfo=UTC), datetime(2019, 3, 1, 5, tzinfo=UTC))
    jan = (datetime(2019, 1, 1, 5, tzinfo=UTC), feb[0])
    assert store.symbols_spanning(
        timeframe="15m", start=feb[0], end=feb[1], symbols=["A", "B"]
    ) == ["A"]
    assert (
        store.symbols_spanning(timeframe="15m", start=jan[0], end=jan[1], symbols=["A", "B"]) == []
    )
    stored = store.read_bars(timeframe="15m", start=feb[0], end=feb[1])
    report = IngestReport(window=feb, requests=())

    def verdict(spanning: list[str]) -> bool:
        outcomes = ingest_checks(
            report,
            stored,
            ValidationConfig(),
            sessions=[date(2019, 2, 4)],
            symbols=["A", "B"],
            spanning=spanning,
        )
        return next(o.passed for o in outcomes if o.name == "sessions_have_bars")

    assert not verdict(["A"]) and verdict([])


def test_epoch_values_outside_1970_2100_are_quarantined_not_wrapped(tmp_path: Path) -> None:
    rows = [
        "1546613100,1,2,0.5,1.5,10",
        "99999999999999,1,2,0.5,1.5,10",
        "9223372036854775807,1,2,0.5,1.5,10",
    ]
    _csv(tmp_path, "A.csv", "timestamp,open,high,low,close,volume", rows)
    result = _validated(_source(tmp_path, timestamp_format="epoch_s"), ["A"])
    assert result.rows_in == 3 and result.rows_stored == 1
    assert result.quarantine["rule"].to_list() == ["unparseable_value"] * 2
    assert "between 1970 and 2100" in result.quarantine["detail"][0]


def test_a_date_only_intraday_file_gets_the_date_hint_before_the_zone_one(tmp_path: Path) -> None:
    _csv(tmp_path, "A.csv", "timestamp,open,high,low,close,volume", ["2019-01-04,1,2,0.5,1.5,10"])
    with pytest.raises(SourceError, match=r"dates without a time.*timeframe: 1d"):
        _source(tmp_path).fetch(["A"], *ALL_TIME, ["A"])


def test_a_file_that_lags_the_clock_loses_no_session(tmp_path: Path) -> None:
    """The nightly reads a vendor file at 18:30 before the vendor has added the day: the day is
    not recorded as fetched, and the next night's run stores it."""
    header = "timestamp,open,high,low,close,volume"
    rows = ["2019-01-02,10,11,9,10,100", "2019-01-03,10,11,9,10,100"]
    _csv(tmp_path / "src", "A.csv", header, rows)
    source = _source(tmp_path / "src", DAILY)
    store = _store(tmp_path)
    universe = _universe(["A"], timeframe="1d", start="2019-01-01")
    year = (datetime(2019, 1, 1, 5, tzinfo=UTC), datetime(2020, 1, 1, 5, tzinfo=UTC))
    evening = datetime(2019, 1, 4, 23, 30, tzinfo=UTC)  # 18:30 New York, after the close
    ingest_window(source, store, universe, ValidationConfig(), year, as_of=evening, batch="y")
    covered = store.covered(source=source.name, timeframe="1d", symbols=["A"])["A"]
    assert max(e for _, e in covered) == datetime(2019, 1, 4, 14, 30, tzinfo=UTC)  # Jan 4 open
    _csv(tmp_path / "src", "A.csv", header, [*rows, "2019-01-04,10,11,9,10.5,100"])
    next_evening = datetime(2019, 1, 7, 23, 30, tzinfo=UTC)
    ingest_window(source, store, universe, ValidationConfig(), year, as_of=next_evening, batch="y")
    assert store.read_bars(timeframe="1d", start=year[0], end=year[1]).height == 3
