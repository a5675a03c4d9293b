"""Typed Dagster resources: one per external system, each with a real and a fake side."""

from resources.market_data import (
    AlpacaBarSourceResource,
    BarSourceResource,
    FileBarSourceResource,
)
from resources.mlflow_resource import MlflowResource, OptunaResource
from resources.parquet_io_manager import PolarsParquetIOManager
from resources.trading_database import TradingDatabaseResource

__all__ = [
    "AlpacaBarSourceResource",
    "BarSourceResource",
    "FileBarSourceResource",
    "MlflowResource",
    "OptunaResource",
    "PolarsParquetIOManager",
    "TradingDatabaseResource",
]
