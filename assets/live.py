"""The live session's observable assets: what it signalled, ordered and held, bar by bar.

They are external assets (nothing materializes them): ``live_session_job`` records one
observation of each per decided bar, with the bar's details as metadata.
"""

from __future__ import annotations

import dagster as dg

from assets.metadata import OWNERS

GROUP = "live"
CODE_VERSION = "1"
"""Bump it when what live_session_job records of these assets changes (see assets/metadata.py)."""

LIVE_SIGNALS = dg.AssetKey("live_signals")
LIVE_ORDERS = dg.AssetKey("live_orders")
LIVE_POSITIONS = dg.AssetKey("live_positions")

live_assets = [
    dg.AssetSpec(
        LIVE_SIGNALS,
        group_name=GROUP,
        owners=OWNERS[GROUP],
        code_version=CODE_VERSION,
        description="The live session's signals per bar: symbol, probability, threshold and "
        "intended signed shares.",
    ),
    dg.AssetSpec(
        LIVE_ORDERS,
        group_name=GROUP,
        owners=OWNERS[GROUP],
        code_version=CODE_VERSION,
        description="The orders the live session sent per bar: client order id, symbol, side, "
        "quantity and intent.",
    ),
    dg.AssetSpec(
        LIVE_POSITIONS,
        group_name=GROUP,
        owners=OWNERS[GROUP],
        code_version=CODE_VERSION,
        description="The live session's positions (signed shares), equity and trading state "
        "after each bar.",
    ),
]
