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

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
        aggregate_to: [60m, 1d]
        symbols:
          - {symbol: AAPL, sector: Information Technology}
    """

    name: str
    calendar: str = "XNYS"
    timeframe: str
    session: Literal["regular", "extended"] = "regular"
    history_start: date
    aggregate_to: tuple[str, ...] = ()
    symbols: tuple[SymbolSpec, ...]

    @field_validator("timeframe")
    @classmethod
    def _intraday_timeframe(cls, v: str) -> str:
        tf = Timeframe.parse(v)
        if tf.is_daily:
            raise ValueError("the source timeframe must be intraday (for example 1m or 15m)")
        return tf.label

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


class FileSourceConfig(_Frozen):
    """A directory of CSV or Parquet files.

    ``pattern`` finds the files; a ``{symbol}`` placeholder in it names each file's symbol (one file
    per symbol). Without it, the files must carry a symbol column (``columns.symbol``).
    ``timezone`` is the zone of naive wall-clock timestamps (an IANA name such as
    ``America/New_York``); ``label`` says whether a bar's timestamp is its ``start`` or ``end``.
    """

    kind: Literal["files"] = "files"
    path: str
    pattern: str = "*.parquet"
    format: Literal["csv", "parquet"] = "parquet"
    columns: ColumnMap = ColumnMap()
    timezone: str | None = None
    label: Literal["start", "end"]

    @model_validator(mode="after")
    def _symbol_known(self) -> FileSourceConfig:
        if "{symbol}" not in self.pattern and self.columns.symbol is None:
            raise ValueError(
                "say where the symbol comes from: put {symbol} in pattern "
                "(for example '{symbol}_15min.csv') or name the column in columns.symbol"
            )
        return self


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
    ``APCA_API_KEY_ID`` and ``APCA_API_SECRET_KEY``."""

    kind: Literal["alpaca"] = "alpaca"
    feed: Literal["iex", "sip"] = "iex"
    adjustment: Literal["raw", "split", "dividend", "all"] = "raw"
    url_override: str | None = None
    chunk_days: Annotated[int, Field(ge=1, le=31)] = 5
    max_retries: Annotated[int, Field(ge=0, le=20)] = 6
    backoff_base_s: Annotated[float, Field(gt=0)] = 1.0
    backoff_cap_s: Annotated[float, Field(gt=0)] = 60.0

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
    """

    max_abs_log_return: Annotated[float, Field(gt=0)] = 0.15
    max_quarantine_share: Annotated[float, Field(ge=0, le=1)] = 0.05


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
        return _without_password(v, "QUANTDAG_DATABASE_URL")


class Settings(_Frozen):
    """The settings file: the universe to load, validation rules, label settings, research
    (the holdout), where large frames (Parquet) are kept, and one section per environment
    (``local``, ``paper``, ``live``)."""

    universe: str
    validation: ValidationConfig = ValidationConfig()
    labels: LabelSettings = LabelSettings()
    research: ResearchSettings = ResearchSettings()
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
    for key, research in blocks:
        unknown = sorted(set(research.holdout.symbols) - set(universe.symbol_names))
        if unknown:
            raise ConfigError(
                f"{p}: {key}.holdout.symbols: {', '.join(unknown)} are not in the universe "
                f"{universe_path}; hold out symbols of the universe only"
            )
    return settings, universe
