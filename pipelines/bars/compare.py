"""Compare two bar sets of the same timeframe, e.g. our aggregation against a vendor's."""

from __future__ import annotations

import polars as pl

FIELDS = ("open", "high", "low", "close", "volume")


def compare_bars(ours: pl.DataFrame, reference: pl.DataFrame, *, by: str = "month") -> pl.DataFrame:
    """Agreement of ``ours`` with ``reference`` on common (symbol, ts), per ``by`` group
    (``"month"`` of the bar start in UTC, or ``"symbol"``).

    Columns: the group, ``common`` bars, ``only_ours``/``only_reference`` (bars on one side
    only), ``<field>_equal`` (share exactly equal), ``ohlcv_equal`` (all five equal),
    ``volume_ratio_median`` (ours / reference), among the bars that differ in a price
    ``wider_share`` (ours has the higher high or the lower low), and among the bars whose high
    (low) differs, ``high_above_share`` (``low_below_share``): the share where ours is higher
    (lower).
    """
    key = ["symbol", "ts"]
    group = pl.col("ts").dt.strftime("%Y-%m").alias("month") if by == "month" else pl.col("symbol")
    joined = (
        ours.select(*key, *FIELDS)
        .join(reference.select(*key, *FIELDS), on=key, how="full", suffix="_ref", coalesce=True)
        .with_columns(group)
    )
    present = pl.col("open").is_not_null()
    present_ref = pl.col("open_ref").is_not_null()
    eq = {f: pl.col(f) == pl.col(f"{f}_ref") for f in FIELDS}
    price_differs = ~pl.all_horizontal(eq[f] for f in ("open", "high", "low", "close"))
    wider = (pl.col("high") > pl.col("high_ref")) | (pl.col("low") < pl.col("low_ref"))
    both = present & present_ref
    return (
        joined.group_by(by)
        .agg(
            common=both.sum(),
            only_ours=(present & ~present_ref).sum(),
            only_reference=(~present & present_ref).sum(),
            **{f"{f}_equal": eq[f].filter(both).mean() for f in FIELDS},
            ohlcv_equal=pl.all_horizontal(eq.values()).filter(both).mean(),
            volume_ratio_median=(pl.col("volume") / pl.col("volume_ref")).filter(both).median(),
            wider_share=wider.filter(both & price_differs).mean(),
            high_above_share=(pl.col("high") > pl.col("high_ref"))
            .filter(both & ~eq["high"])
            .mean(),
            low_below_share=(pl.col("low") < pl.col("low_ref")).filter(both & ~eq["low"]).mean(),
        )
        .sort(by)
    )
