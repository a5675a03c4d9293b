"""Market-data sources: files (also the snapshot fake of every vendor) and Alpaca."""

from pathlib import Path
from typing import Literal

import dagster as dg

from pipelines.config import AlpacaSourceConfig, ColumnMap, FileSourceConfig, UniverseConfig
from pipelines.data.alpaca import AlpacaBarSource
from pipelines.data.sources import BarSource, FileBarSource

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class BarSourceResource(dg.ConfigurableResource):  # type: ignore[misc]
    """Interface: give the ingestion a :class:`~pipelines.data.sources.BarSource`."""

    def source(self, universe: UniverseConfig) -> BarSource:
        raise NotImplementedError(f"{type(self).__name__} must implement source()")


class FileBarSourceResource(BarSourceResource):
    """Bars from CSV or Parquet files (see :class:`pipelines.config.FileSourceConfig`); a
    relative ``path`` is taken from the project directory."""

    path: str
    pattern: str = "*.parquet"
    format: Literal["csv", "parquet"] = "parquet"
    columns: dict[str, str] = {}
    timezone: str | None = None
    label: Literal["start", "end"] = "start"

    @classmethod
    def from_config(cls, config: FileSourceConfig) -> "FileBarSourceResource":
        return cls(
            path=config.path,
            pattern=config.pattern,
            format=config.format,
            columns=config.columns.model_dump(exclude_none=True),
            timezone=config.timezone,
            label=config.label,
        )

    def config(self) -> FileSourceConfig:
        return FileSourceConfig(
            path=self.path,
            pattern=self.pattern,
            format=self.format,
            columns=ColumnMap(**self.columns),
            timezone=self.timezone,
            label=self.label,
        )

    def source(self, universe: UniverseConfig) -> FileBarSource:
        return FileBarSource(self.config(), universe.base_timeframe, root=PROJECT_ROOT)


class AlpacaBarSourceResource(BarSourceResource):
    """Alpaca historical bars through alpaca-py. Pass the keys as ``dg.EnvVar`` so they are read
    from the environment at run time and never shown in the UI."""

    api_key: str
    secret_key: str
    feed: Literal["iex", "sip"] = "iex"
    adjustment: Literal["raw", "split", "dividend", "all"] = "raw"
    url_override: str | None = None
    chunk_days: int = 5
    max_retries: int = 6

    def source(self, universe: UniverseConfig) -> AlpacaBarSource:
        return AlpacaBarSource(
            AlpacaSourceConfig(
                feed=self.feed,
                adjustment=self.adjustment,
                url_override=self.url_override,
                chunk_days=self.chunk_days,
                max_retries=self.max_retries,
            ),
            universe.base_timeframe,
            api_key=self.api_key,
            secret_key=self.secret_key,
        )
