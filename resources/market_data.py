"""Market-data sources: files (also the snapshot fake of every vendor) and Alpaca."""

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import dagster as dg

from pipelines.config import (
    Adjustment,
    AlpacaSourceConfig,
    ColumnMap,
    FileSourceConfig,
    UniverseConfig,
)
from pipelines.data.normalise import SourceError
from pipelines.data.object_store import LocationError, storage_options
from pipelines.data.sources import BarSource, FileBarSource

PROJECT_ROOT = Path(__file__).resolve().parent.parent


if TYPE_CHECKING:
    from pipelines.data.alpaca import AlpacaBarSource


class BarSourceResource(dg.ConfigurableResource):  # type: ignore[misc]
    """Interface: give the ingestion a :class:`~pipelines.data.sources.BarSource`."""

    def source(self, universe: UniverseConfig) -> BarSource:
        raise NotImplementedError(f"{type(self).__name__} must implement source()")


class FileBarSourceResource(BarSourceResource):
    """Bars from CSV or Parquet files (see :class:`pipelines.config.FileSourceConfig`); a
    relative ``path`` is taken from the project directory. ``path`` may be an
    ``s3://bucket/prefix`` URL: the credentials and endpoint are then read from the environment
    when the source is opened (``QUANTDAG_S3_ACCESS_KEY_ID`` ... or ``AWS_...``, see
    :mod:`pipelines.data.object_store`), never from this config."""

    path: str
    pattern: str = "*.parquet"
    format: str | None = None  # csv or parquet; default: the pattern's extension
    columns: dict[str, str] = {}
    timezone: str | None = None
    label: Literal["start", "end"] = "start"
    timestamp_format: str | None = None
    adjustment: Adjustment = "unknown"

    @classmethod
    def from_config(cls, config: FileSourceConfig) -> "FileBarSourceResource":
        return cls(
            path=config.path,
            pattern=config.pattern,
            format=config.format,
            columns=config.columns.model_dump(exclude_none=True),
            timezone=config.timezone,
            label=config.label,
            timestamp_format=config.timestamp_format,
            adjustment=config.adjustment,
        )

    def config(self) -> FileSourceConfig:
        return FileSourceConfig(
            path=self.path,
            pattern=self.pattern,
            format=self.format,  # type: ignore[arg-type]  # checked by FileSourceConfig
            columns=ColumnMap(**self.columns),
            timezone=self.timezone,
            label=self.label,
            timestamp_format=self.timestamp_format,
            adjustment=self.adjustment,
        )

    def source(self, universe: UniverseConfig) -> FileBarSource:
        try:
            options = storage_options(self.path, os.environ)
        except LocationError as exc:
            raise SourceError(f"source path: {exc}") from None
        return FileBarSource(
            self.config(),
            universe.base_timeframe,
            root=PROJECT_ROOT,
            history=(universe.history_start, universe.history_end),
            calendar=universe.calendar,
            storage_options=options,
        )


_ALPACA = AlpacaSourceConfig()


class AlpacaBarSourceResource(BarSourceResource):
    """Alpaca historical bars through alpaca-py; the settings are those of
    :class:`pipelines.config.AlpacaSourceConfig` (build it with :meth:`from_config`). Pass the
    keys as ``dg.EnvVar`` so they are read from the environment at run time and never shown in
    the UI. ``adjustment`` is the price basis; live must use the one the model was trained on."""

    api_key: str
    secret_key: str
    feed: Literal["iex", "sip"] = _ALPACA.feed
    adjustment: Literal["raw", "split", "dividend", "all"] = _ALPACA.adjustment
    url_override: str | None = None
    chunk_days: int = _ALPACA.chunk_days
    max_retries: int = _ALPACA.max_retries
    backoff_base_s: float = _ALPACA.backoff_base_s
    backoff_cap_s: float = _ALPACA.backoff_cap_s
    connect_timeout_s: float = _ALPACA.connect_timeout_s
    read_timeout_s: float = _ALPACA.read_timeout_s
    response_timeout_s: float = _ALPACA.response_timeout_s
    max_pages: int = _ALPACA.max_pages
    feed_delay_minutes: int | None = _ALPACA.feed_delay_minutes

    @classmethod
    def from_config(
        cls,
        config: AlpacaSourceConfig,
        *,
        api_key: str,
        secret_key: str,
        url_override: str | None = None,
    ) -> "AlpacaBarSourceResource":
        """Every setting of ``config``; ``url_override`` (e.g. from ``APCA_DATA_URL``) is used
        when the config has none."""
        settings = config.model_dump(exclude={"kind", "url_override"})
        return cls(
            api_key=api_key,
            secret_key=secret_key,
            url_override=config.url_override or url_override,
            **settings,
        )

    def config(self) -> AlpacaSourceConfig:
        """The validated settings (a wrong value is refused here, before any request)."""
        return AlpacaSourceConfig(
            feed=self.feed,
            adjustment=self.adjustment,
            url_override=self.url_override,
            chunk_days=self.chunk_days,
            max_retries=self.max_retries,
            backoff_base_s=self.backoff_base_s,
            backoff_cap_s=self.backoff_cap_s,
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            response_timeout_s=self.response_timeout_s,
            max_pages=self.max_pages,
            feed_delay_minutes=self.feed_delay_minutes,
        )

    def source(self, universe: UniverseConfig) -> "AlpacaBarSource":
        # alpaca-py (a second to import) only where the Alpaca source is used.
        from pipelines.data.alpaca import AlpacaBarSource

        return AlpacaBarSource(
            self.config(),
            universe.base_timeframe,
            api_key=self.api_key,
            secret_key=self.secret_key,
        )
