"""Validated configuration: the universe file and the settings file.

Both are YAML, parsed into frozen pydantic models that forbid unknown keys. Any mistake is a
:class:`ConfigError` whose message names the file, the key path and what was expected, with a
suggestion when a key looks like a typo.
"""

from __future__ import annotations

import difflib
import os
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.portfolio.config import Covariance, Method
from pipelines.secrets import has_password, redact_uri
from pipelines.timeframes import Timeframe

ENVIRONMENTS = ("local", "paper", "live")
Environment = Literal["local", "paper", "live"]
LIVE_CONFIRMATION = "I accept real-money orders"


class ConfigError(ValueError):
    """A configuration file or environment variable is wrong; the message says where and how."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SymbolSpec(_Frozen):
    """One tradable symbol of the universe."""

    symbol: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9.\-]{0,9}$")]
    sector: str = "Unknown"


class UniverseConfig(_Frozen):
    """What is traded: symbols, their bar timeframe, the session and the history to keep.

    Example (``config/universe.yaml``)::

        name: eqker-sample
        calendar: XNYS
        timeframe: 15m          # the bars the source delivers
        session: regular        # regular (09:30-16:00 ET) or extended (04:00-20:00 ET)
        history_start: 2019-01-01
        history_end: 2019-02-15 # optional: a fixed data set ends here; omit for live data
        aggregate_to: [60m, 1d]
        symbols:
          - {symbol: AAPL, sector: Information Technology}

    A daily source (``timeframe: 1d``) is partitioned by year, an intraday one by month.
    """

    name: str
    calendar: str = "XNYS"
    timeframe: str
    session: Literal["regular", "extended"] = "regular"
    history_start: date
    history_end: date | None = None
    aggregate_to: tuple[str, ...] = ()
    symbols: tuple[SymbolSpec, ...]

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, v: str) -> str:
        return Timeframe.parse(v).label

    @field_validator("calendar")
    @classmethod
    def _known_calendar(cls, v: str) -> str:
        return known_calendar(v)

    @field_validator("aggregate_to")
    @classmethod
    def _parse_targets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(Timeframe.parse(t).label for t in v)

    @model_validator(mode="after")
    def _check(self) -> UniverseConfig:
        seen: set[str] = set()
        for s in self.symbols:
            if s.symbol in seen:
                raise ValueError(f"symbol {s.symbol} is listed twice")
            seen.add(s.symbol)
        if not self.symbols:
            raise ValueError("the universe has no symbols")
        if self.history_end is not None and self.history_end < self.history_start:
            raise ValueError(
                f"history_end {self.history_end} is before history_start {self.history_start}"
            )
        base = Timeframe.parse(self.timeframe)
        for t in self.aggregate_to:
            if not base.divides(Timeframe.parse(t)):
                raise ValueError(
                    f"aggregate_to: {t} cannot be built from {self.timeframe} bars "
                    "(it must be a whole multiple of the source timeframe, or 1d)"
                )
        return self

    @property
    def base_timeframe(self) -> Timeframe:
        return Timeframe.parse(self.timeframe)

    @property
    def partition_grain(self) -> Literal["month", "year"]:
        """``year`` for a daily source (a year of daily bars is as small as a month of
        intraday ones), ``month`` otherwise."""
        return "year" if self.base_timeframe.is_daily else "month"

    @property
    def target_timeframes(self) -> tuple[Timeframe, ...]:
        """The coarser timeframes to build, without the source timeframe itself, sorted."""
        base = self.base_timeframe
        return tuple(sorted({Timeframe.parse(t) for t in self.aggregate_to} - {base}))

    @property
    def symbol_names(self) -> tuple[str, ...]:
        return tuple(s.symbol for s in self.symbols)


class ColumnMap(_Frozen):
    """Which source column holds each field. Missing optional fields are left empty."""

    timestamp: str = "timestamp"
    open: str = "open"
    high: str = "high"
    low: str = "low"
    close: str = "close"
    volume: str = "volume"
    symbol: str | None = None
    vwap: str | None = None
    trade_count: str | None = None
    adj_close: str | None = None
    """A dividend- and split-adjusted close beside the close (Yahoo's ``Adj Close``): when
    mapped, open, high, low and close are scaled by ``adj_close / close`` (total return)."""


Adjustment = Literal["raw", "split", "total_return", "unknown"]
"""How a source's prices are adjusted: ``raw`` (as traded; splits show as jumps), ``split``
(split-adjusted, dividends not), ``total_return`` (splits and dividends), ``unknown``."""

ADJ_CLOSE_NAMES = ("adj close", "adj_close", "adjclose", "adjusted close", "adjusted_close")


class FileSourceConfig(_Frozen):
    """A directory of CSV or Parquet files.

    ``pattern`` finds the files; a ``{symbol}`` placeholder in it names each file's symbol (one file
    per symbol). Without it, the files must carry a symbol column (``columns.symbol``).
    ``format`` defaults to the pattern's extension (``.csv`` or ``.parquet``).
    ``timezone`` is the zone of naive wall-clock timestamps (an IANA name such as
    ``America/New_York``); ``label`` says whether a bar's timestamp is its ``start`` or ``end``
    (daily bars are labelled by their session date and ignore it).
    ``timestamp_format`` parses timestamps the built-in ISO forms do not (a strftime format such
    as ``"%m/%d/%Y %H:%M"``, or ``epoch_s`` / ``epoch_ms`` for Unix time in UTC).
    ``adjustment`` declares how prices are adjusted; with ``columns.adj_close`` mapped it must
    be ``total_return``. Example (Yahoo-style daily CSVs)::

        {kind: files, path: data/daily, pattern: "{symbol}.csv", label: end,
         adjustment: total_return,
         columns: {timestamp: Date, open: Open, high: High, low: Low, close: Close,
                   volume: Volume, adj_close: Adj Close}}
    """

    kind: Literal["files"] = "files"
    path: str
    pattern: str = "*.parquet"
    format: Literal["csv", "parquet"] | None = None
    columns: ColumnMap = ColumnMap()
    timezone: str | None = None
    label: Literal["start", "end"]
    timestamp_format: str | None = None
    adjustment: Adjustment = "unknown"

    @field_validator("timestamp_format")
    @classmethod
    def _usable_format(cls, v: str | None) -> str | None:
        if v is None or v in ("epoch_s", "epoch_ms"):
            return v
        if "%" not in v:
            raise ValueError(
                f"{v!r} is not a strftime format (e.g. '%m/%d/%Y %H:%M') nor epoch_s / epoch_ms"
            )
        return v

    @property
    def file_format(self) -> Literal["csv", "parquet"]:
        """``format``, or the one the pattern's extension names."""
        if self.format is not None:
            return self.format
        return "csv" if self.pattern.lower().endswith(".csv") else "parquet"

    @model_validator(mode="after")
    def _declared_adjustment(self) -> FileSourceConfig:
        if self.columns.adj_close is not None and self.adjustment != "total_return":
            raise ValueError(
                f"columns.adj_close is mapped, which makes prices total-return adjusted: "
                f"declare `adjustment: total_return` (not {self.adjustment!r}) or unmap it"
            )
        suffix = self.pattern.lower().rsplit(".", 1)[-1] if "." in self.pattern else ""
        if self.format is not None and suffix in ("csv", "parquet") and suffix != self.format:
            raise ValueError(
                f"pattern {self.pattern!r} names .{suffix} files but format is "
                f"{self.format!r}: remove `format:` or make them agree"
            )
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        return None if v is None else known_zone(v)

    @model_validator(mode="after")
    def _symbol_known(self) -> FileSourceConfig:
        if "{symbol}" not in self.pattern and self.columns.symbol is None:
            raise ValueError(
                "say where the symbol comes from: put {symbol} in pattern "
                "(for example '{symbol}_15min.csv') or name the column in columns.symbol"
            )
        return self


def known_calendar(name: str) -> str:
    """``name`` if exchange_calendars knows it, else a ValueError listing close names.

    Example: ``known_calendar("XNYS")`` is ``"XNYS"``; ``"NYSEX"`` is refused.
    """
    import exchange_calendars as xcals  # imported here: loading it costs ~0.5 s

    names = xcals.get_calendar_names(include_aliases=True)
    if name in names:
        return name
    hint = difflib.get_close_matches(name, names, n=3)
    also = f" (did you mean {', '.join(hint)}?)" if hint else ""
    raise ValueError(
        f"calendar {name!r} is not an exchange_calendars name{also}; US equities use XNYS"
    )


def known_zone(name: str) -> str:
    """``name`` if it is an IANA time zone, else a ValueError with close names."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        hint = difflib.get_close_matches(name, sorted(available_timezones()), n=3)
        also = f" (did you mean {', '.join(hint)}?)" if hint else ""
        raise ValueError(
            f"time zone {name!r} is not an IANA zone name{also}; e.g. America/New_York"
        ) from None
    return name


def database_url(url: str) -> str:
    """``url`` if SQLAlchemy can parse it and names a backend the store supports (SQLite or
    PostgreSQL), else a ValueError saying what a URL looks like."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    example = "sqlite:///.quantdag/trading.db or postgresql+psycopg://user@host:5432/db"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            f"{redact_uri(url)!r} is not a database URL; write e.g. {example}"
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(
            f"database backend {parsed.get_backend_name()!r} is not supported; use {example}"
        )
    return url


def _without_password(url: str, variable: str) -> str:
    """A settings-file URL, refused when it holds a password: the settings are shown in the
    Dagster UI and stored with every run, the environment is not."""
    if has_password(url):
        raise ValueError(
            f"{redact_uri(url)} holds a password; secrets come only from the environment: "
            f"remove it here and set {variable} instead"
        )
    return url


class AlpacaSourceConfig(_Frozen):
    """Alpaca historical bars through alpaca-py. Credentials come from the environment only:
    ``APCA_API_KEY_ID`` and ``APCA_API_SECRET_KEY``.

    ``adjustment``: the corporate-action basis of the prices; ``all`` (split and dividend
    adjusted) is the default because raw prices turn a split into a fake return. Live trading must
    use the same basis as the model's training data.
    ``chunk_days``: days per request window. Example: 5 asks for a week of bars at a time.
    ``max_retries``: retries of one page on a transient failure (HTTP 429/5xx, a dropped or
    refused connection, a timeout, a body that is not the JSON Alpaca sends). Example: 6 tries a
    page at most 7 times.
    ``backoff_base_s`` / ``backoff_cap_s``: full-jitter backoff between retries, uniform in
    ``[0, min(cap, base * 2**attempt)]`` seconds. Example: base 1, cap 60 waits at most 1, 2, 4,
    ... then 60 s.
    ``connect_timeout_s`` / ``read_timeout_s``: per-request limits in seconds for opening the
    connection and for each wait on the socket. Example: 5 and 30.
    ``response_timeout_s``: the whole of one response, however slowly its bytes arrive (a
    server that sends a byte a second never trips the read timeout). Example: 120.
    ``max_pages``: pages (of up to 10,000 bars) one window may take before it is an error, which
    stops a server that keeps sending ``next_page_token``. Example: 1000 allows 10 million bars.
    ``feed_delay_minutes``: how long after a bar closes the feed's history is final; ``None``
    takes the feed's default (15 for ``sip``, whose last 15 minutes the free plan may not query;
    1 for ``iex``, which is real time, as a margin for late trades). Example: 0 with a paid SIP
    subscription.
    """

    kind: Literal["alpaca"] = "alpaca"
    feed: Literal["iex", "sip"] = "iex"
    adjustment: Literal["raw", "split", "dividend", "all"] = "all"
    url_override: str | None = None
    chunk_days: Annotated[int, Field(ge=1, le=31)] = 5
    max_retries: Annotated[int, Field(ge=0, le=20)] = 6
    backoff_base_s: Annotated[float, Field(gt=0)] = 1.0
    backoff_cap_s: Annotated[float, Field(gt=0)] = 60.0
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    read_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    response_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    max_pages: Annotated[int, Field(ge=1)] = 1000
    feed_delay_minutes: Annotated[int, Field(ge=0, le=24 * 60)] | None = None

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> AlpacaSourceConfig:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError(
                f"backoff_cap_s ({self.backoff_cap_s}) is below backoff_base_s "
                f"({self.backoff_base_s}): the cap must be at least the first wait"
            )
        return self

    @field_validator("url_override")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        return (
            None if v is None else _without_password(v, "APCA_API_KEY_ID and APCA_API_SECRET_KEY")
        )


SourceConfig = Annotated[FileSourceConfig | AlpacaSourceConfig, Field(discriminator="kind")]


class ValidationConfig(_Frozen):
    """Rules for incoming bars.

    ``max_abs_log_return``: a close-to-close move with ``|ln(c_t / c_{t-1})|`` above this is
    flagged as a price jump (kept, not dropped). Example: 0.15 flags a 16% move.
    ``max_quarantine_share``: the asset check warns when more than this share of the rows is
    quarantined. Example: 0.05 warns above 5%.
    ``min_price`` / ``max_price`` (USD) and ``max_volume`` (shares in one bar): a bar outside
    them is quarantined as ``implausible_value`` (a unit or decimal error, not a market move).
    Defaults: 0.0001, 10,000,000 and 100,000,000,000 (the busiest US day trades ~2e10 shares).
    """

    max_abs_log_return: Annotated[float, Field(gt=0)] = 0.15
    max_quarantine_share: Annotated[float, Field(ge=0, le=1)] = 0.05
    min_price: Annotated[float, Field(gt=0)] = 1e-4
    max_price: Annotated[float, Field(gt=0)] = 1e7
    max_volume: Annotated[float, Field(gt=0)] = 1e11

    @model_validator(mode="after")
    def _price_bounds(self) -> ValidationConfig:
        if self.min_price >= self.max_price:
            raise ValueError(f"min_price {self.min_price} is not below max_price {self.max_price}")
        return self


class LabelSettings(_Frozen):
    """Triple-barrier labels (see :class:`pipelines.labels.BarrierConfig`) and the sample-weight
    time decay. Example: ``profit_take: 2.0`` with ATR(14)/close = 0.4% puts the profit-take
    0.8% above a long entry; ``max_holding_bars: 16`` on 15-minute bars is four hours."""

    profit_take: Annotated[float, Field(gt=0)] = 2.0
    stop_loss: Annotated[float, Field(gt=0)] = 2.0
    max_holding_bars: Annotated[int, Field(ge=1)] = 16
    volatility: Literal["atr", "std"] = "atr"
    volatility_window: Annotated[int, Field(ge=2)] = 14
    cut_at_session_close: bool = True
    decay: Annotated[float, Field(ge=0, le=1)] = 1.0


class HoldoutSettings(_Frozen):
    """The final holdout, never used to tune, train, select or promote a model, and read once
    per model version (see :mod:`pipelines.models.holdout`). ``start``: the first New York date
    of the time holdout (every row from it on); ``symbols``: symbols held out over the whole
    range. Example: ``{start: 2022-06-01, symbols: [AMZN, JPM]}``."""

    start: date | None = None
    symbols: tuple[str, ...] = ()


class ResearchSettings(_Frozen):
    """How research is kept honest: the holdout."""

    holdout: HoldoutSettings = HoldoutSettings()


class PortfolioSettings(_Frozen):
    """How open bets share the risk budget (see :class:`pipelines.portfolio.config.
    PortfolioConfig`). Example: ``{method: hrp, lookback: 252, rebalance_band: 0.25,
    min_trade_value: 1000}`` weighs bets by hierarchical risk parity on a year of daily returns
    and skips resizes under 25% or 1,000 USD."""

    method: Method = "bet_size"
    lookback: Annotated[int, Field(ge=2)] = 252
    min_history: Annotated[int, Field(ge=2)] = 20
    covariance: Covariance = "ledoit_wolf"
    risk_aversion: Annotated[float, Field(gt=0)] = 1.0
    rebalance_band: Annotated[float, Field(ge=0)] = 0.25
    min_trade_value: Annotated[float, Field(ge=0)] = 1_000.0


class RiskSettings(_Frozen):
    """Pre-trade checks, each refusal recorded with its rule (see :class:`pipelines.risk.checks.
    RiskConfig`; null turns a check off). Fractions are of equity: ``max_position: 0.10`` caps a
    position at 10% of equity; ``max_order_notional`` is USD; ``price_band: 0.10`` refuses an
    order sized at a price more than 10% from the last trade."""

    max_order_notional: Annotated[float, Field(gt=0)] | None = 250_000.0
    max_position: Annotated[float, Field(gt=0)] | None = 0.10
    max_gross: Annotated[float, Field(gt=0)] | None = 1.0
    max_net: Annotated[float, Field(gt=0)] | None = 1.0
    max_orders_per_minute: Annotated[int, Field(ge=1)] | None = 120
    price_band: Annotated[float, Field(gt=0)] | None = 0.10
    trading_hours: bool = True
    restricted: tuple[str, ...] = ()
    allow_short: bool = True
    min_bar_volume: Annotated[float, Field(ge=0)] = 1.0


class LimitSettings(_Frozen):
    """Trading states (see :class:`pipelines.risk.limits.LimitsConfig`): ``daily_loss: 0.03``
    halts for the rest of the session after a 3% loss since the previous session's last equity;
    ``reduce_drawdown: 0.05`` only cuts exposure from a 5% drawdown; ``halt_drawdown: 0.10``
    halts and trips the kill switch; ``max_data_age_s`` (seconds, null: off) reduces while the
    newest bar is older than that."""

    daily_loss: Annotated[float, Field(gt=0, lt=1)] | None = 0.03
    reduce_drawdown: Annotated[float, Field(gt=0, lt=1)] | None = 0.05
    halt_drawdown: Annotated[float, Field(gt=0, lt=1)] | None = 0.10
    max_data_age_s: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _ladder(self) -> LimitSettings:
        r, h = self.reduce_drawdown, self.halt_drawdown
        if r is not None and h is not None and r >= h:
            raise ValueError(f"reduce_drawdown {r} must be below halt_drawdown {h}")
        return self


class TradingSettings(_Frozen):
    """The trading path's settings, the same in the backtest and the live session: portfolio
    construction, pre-trade checks, trading-state limits, and whether a tripped kill switch
    also closes every position (``flatten_on_trip``). ``compare_methods`` (e.g. ``[hrp,
    inverse_volatility, equal_weight]``) backtests the reported configuration with each of
    these portfolio methods as well, each one a trial, side by side in the report."""

    portfolio: PortfolioSettings = PortfolioSettings()
    risk: RiskSettings = RiskSettings()
    limits: LimitSettings = LimitSettings()
    flatten_on_trip: bool = True
    compare_methods: tuple[Method, ...] = ()


class LiveSettings(_Frozen):
    """The live session and the sensor that starts it.

    ``grace_s``: seconds after a bar's end that its bucket waits for symbols that have not sent
    their last minute; ``data_timeout_s``: silence of the bar stream (seconds) after which it is
    reconnected and the gap backfilled over REST; ``reconcile_every``: bars between
    reconciliations with the broker; ``cancel_timeout_s``: the wait for a cancel's confirmation;
    ``on_stop``: what a terminate does with working orders (``cancel``, ``keep``, ``flatten``);
    ``dry_run``: decide and record, send nothing; ``history_days``: calendar days of stored bars
    that warm the features; ``heartbeat_s``: seconds between heartbeats; ``hang_s``: seconds
    without progress of the session's loop after which its heartbeats stop (it then reads as
    dead and is relaunched); ``stop_timeout_s``: how long a terminated session may take to handle
    its working orders before its run ends anyway (the kill switch is then tripped);
    ``metrics_port``: where the session serves its Prometheus metrics (``/metrics`` on
    ``metrics_addr``; 0: not served). The sensor:
    ``staleness_s`` (a running session's heartbeat older than this alerts and trips the kill
    switch; longer than a relaunch takes, or a crash would halt the relaunch),
    ``relaunch_after_s`` (a STARTED run silent this long is reported failed so it can be
    relaunched), ``startup_s`` (the longest a new run may take to write its first heartbeat),
    ``max_attempts`` a session, ``grace_after_close_s`` added to the run's
    ``dagster/max_runtime``, ``minimum_interval_seconds`` between the sensor's evaluations."""

    grace_s: Annotated[float, Field(ge=0)] = 2.0
    data_timeout_s: Annotated[float, Field(gt=0)] = 90.0
    reconcile_every: Annotated[int, Field(ge=1)] = 4
    cancel_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    on_stop: Literal["cancel", "keep", "flatten"] = "cancel"
    dry_run: bool = False
    history_days: Annotated[int, Field(ge=1)] = 60
    heartbeat_s: Annotated[float, Field(gt=0)] = 5.0
    hang_s: Annotated[float, Field(gt=0)] = 120.0
    stop_timeout_s: Annotated[float, Field(gt=0)] = 240.0
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0
    metrics_addr: str = "127.0.0.1"
    staleness_s: Annotated[float, Field(gt=0)] = 600.0
    relaunch_after_s: Annotated[float, Field(gt=0)] = 60.0
    startup_s: Annotated[float, Field(gt=0)] = 300.0
    max_attempts: Annotated[int, Field(ge=1)] = 5
    grace_after_close_s: Annotated[float, Field(ge=0)] = 900.0
    minimum_interval_seconds: Annotated[int, Field(ge=1)] = 30


class EnvironmentConfig(_Frozen):
    """One complete resource set, chosen by ``QUANTDAG_ENV``. ``research``, when given,
    replaces the top-level one for this environment (e.g. no time holdout for a live account,
    whose every new session would otherwise be held out of training)."""

    source: SourceConfig
    database_url: str = "sqlite:///.quantdag/trading.db"
    research: ResearchSettings | None = None

    @field_validator("database_url")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        return _without_password(database_url(v), "QUANTDAG_DATABASE_URL")


class Settings(_Frozen):
    """The settings file: the universe to load, validation rules, label settings, research
    (the holdout), where large frames (Parquet) are kept, and one section per environment
    (``local``, ``paper``, ``live``)."""

    universe: str
    validation: ValidationConfig = ValidationConfig()
    labels: LabelSettings = LabelSettings()
    research: ResearchSettings = ResearchSettings()
    trading: TradingSettings = TradingSettings()
    live: LiveSettings = LiveSettings()
    data_dir: str = ".quantdag"
    environments: dict[Environment, EnvironmentConfig]


def _format_error(path: Path, model: type[BaseModel], err: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        if e["type"] == "extra_forbidden":
            key = str(e["loc"][-1])
            known = _known_keys(model, e["loc"][:-1])
            hint = difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            lines.append(f"  {loc}: unknown key{suggestion}; allowed keys: {', '.join(known)}")
        else:
            lines.append(f"  {loc or '<top level>'}: {e['msg']}")
    return "\n".join(lines)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every model inside an annotation: itself, union members, dict values, tuple items."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` (a pydantic error location) below ``model``."""
    candidates: list[type[BaseModel]] = [model]
    for part in loc:
        inner = [
            m
            for c in candidates
            if isinstance(part, str) and part in c.model_fields
            for m in _models_in(c.model_fields[part].annotation)
        ]
        if not inner:
            # A dict key, a list index or a union's tag (``kind``): the tag picks one member.
            tagged = [
                c
                for c in candidates
                if "kind" in c.model_fields and c.model_fields["kind"].default == part
            ]
            inner = tagged or candidates
        candidates = inner
    return sorted({k for c in candidates for k in c.model_fields})


def load_model[M: BaseModel](path: str | Path, model: type[M]) -> M:
    """Read YAML ``path`` into ``model``; raise :class:`ConfigError` naming the file and key."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: configuration file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of keys at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(p, model, exc)) from None


def selected_environment(env: dict[str, str] | None = None) -> Environment:
    """The environment named by ``QUANTDAG_ENV`` (default ``local``).

    ``live`` is an explicit opt-in: it also needs ``QUANTDAG_LIVE_CONFIRM`` set to
    ``"I accept real-money orders"``.
    """
    values = os.environ if env is None else env
    name = values.get("QUANTDAG_ENV", "local").strip().lower()
    if name not in ENVIRONMENTS:
        raise ConfigError(
            f"QUANTDAG_ENV={name!r} is not an environment; use one of {', '.join(ENVIRONMENTS)}"
        )
    if name == "live" and values.get("QUANTDAG_LIVE_CONFIRM") != LIVE_CONFIRMATION:
        raise ConfigError(
            "QUANTDAG_ENV=live trades real money and is an explicit opt-in: also set "
            f"QUANTDAG_LIVE_CONFIRM={LIVE_CONFIRMATION!r}"
        )
    return name  # type: ignore[return-value]


def load_settings(path: str | Path) -> tuple[Settings, UniverseConfig]:
    """Load the settings file and the universe file it names (relative to the settings file)."""
    p = Path(path)
    settings = load_model(p, Settings)
    universe_path = Path(settings.universe)
    if not universe_path.is_absolute():
        universe_path = p.parent / universe_path
    universe = load_model(universe_path, UniverseConfig)
    blocks = [("research", settings.research)] + [
        (f"environments.{name}.research", env.research)
        for name, env in settings.environments.items()
        if env.research is not None
    ]
    if universe.base_timeframe.is_daily and settings.labels.cut_at_session_close:
        raise ConfigError(
            f"{p}: labels.cut_at_session_close is true but {universe_path} has daily bars "
            "(timeframe: 1d): a daily bar is a whole session, so no label could be made; set "
            "`cut_at_session_close: false`"
        )
    for key, research in blocks:
        unknown = sorted(set(research.holdout.symbols) - set(universe.symbol_names))
        if unknown:
            raise ConfigError(
                f"{p}: {key}.holdout.symbols: {', '.join(unknown)} are not in the universe "
                f"{universe_path}; hold out symbols of the universe only"
            )
    return settings, universe
