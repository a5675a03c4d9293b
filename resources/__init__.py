"""Typed Dagster resources: one per external system, each with a real and a fake side."""

from resources.market_data import (
    AlpacaBarSourceResource,
    BarSourceResource,
    FileBarSourceResource,
)
from resources.trading_database import TradingDatabaseResource

__all__ = [
    "AlpacaBarSourceResource",
    "BarSourceResource",
    "FileBarSourceResource",
    "TradingDatabaseResource",
]
