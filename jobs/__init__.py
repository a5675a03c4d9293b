"""Jobs: named selections of assets to run together."""

from __future__ import annotations

import dagster as dg

from assets.backtest import GROUP as BACKTEST_GROUP
from assets.bars import GROUP as MARKET_DATA_GROUP
from assets.research import GROUP as RESEARCH_GROUP
from assets.training import GROUP as TRAINING_GROUP
from jobs.kill_switch import kill_switch_job
from jobs.live import build_live_session_job

__all__ = ["build_jobs", "build_live_session_job", "kill_switch_job"]


def build_jobs() -> list[dg.UnresolvedAssetJobDefinition]:
    market_data_job = dg.define_asset_job(
        "market_data_job",
        selection=dg.AssetSelection.groups(MARKET_DATA_GROUP),
        description="Ingest, validate and aggregate the bars of one month.",
    )
    all_assets_job = dg.define_asset_job(
        "all_assets_job",
        selection=dg.AssetSelection.groups(MARKET_DATA_GROUP, RESEARCH_GROUP),
        description="Everything of one month: bars, aggregates, features and labels (the "
        "nightly's data run).",
    )
    research_job = dg.define_asset_job(
        "research_job",
        selection=dg.AssetSelection.groups(RESEARCH_GROUP),
        description="Features and labels of one month, from bars already stored (make run "
        "stores every month's bars first: labels near a month's end read the next month's).",
    )
    training_job = dg.define_asset_job(
        "training_job",
        selection=dg.AssetSelection.groups(TRAINING_GROUP),
        description="Training set, purged walk-forward models, out-of-sample predictions and "
        "the champion decision (run config: mode quick or full).",
    )
    backtest_job = dg.define_asset_job(
        "backtest_job",
        selection=dg.AssetSelection.groups(BACKTEST_GROUP),
        description="The backtest report of the model strategy on the out-of-sample predictions.",
    )
    return [market_data_job, all_assets_job, research_job, training_job, backtest_job]
