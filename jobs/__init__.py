"""Jobs: named selections of assets to run together."""

from __future__ import annotations

import dagster as dg

from assets.bars import GROUP as MARKET_DATA_GROUP


def build_jobs() -> list[dg.UnresolvedAssetJobDefinition]:
    market_data_job = dg.define_asset_job(
        "market_data_job",
        selection=dg.AssetSelection.groups(MARKET_DATA_GROUP),
        description="Ingest, validate and aggregate the bars of one month.",
    )
    all_assets_job = dg.define_asset_job(
        "all_assets_job",
        selection=dg.AssetSelection.all(),
        description="Everything for one month: bars, aggregates, features and labels.",
    )
    return [market_data_job, all_assets_job]
