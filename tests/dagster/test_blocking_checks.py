"""Blocking checks block: a check that says "this data is wrong" is a blocking Dagster check.
On the 15-minute sample, in process."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from tests.dagster.test_materialize import _sample_setup

JAN, FEB, MAR = "2019-01-01", "2019-02-01", "2019-03-01"
BLOCKING = {
    ("bars_15m", "rows_accounted"),
    ("bars_15m", "bar_integrity"),
    ("bars_60m", "bar_integrity"),
    ("bars_60m", "volume_conserved"),
    ("bars_1d", "bar_integrity"),
    ("bars_1d", "volume_conserved"),
    ("feature_matrix", "finite_after_warmup"),
    ("feature_matrix", "point_in_time"),
    ("feature_matrix", "stream_parity"),
    ("triple_barrier_labels", "within_vertical_barrier"),
}


def _setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    bar_assets, research, resources, instance = _sample_setup(tmp_path)
    assets = [*bar_assets, *research]
    return assets, resources, instance


def _month(assets, resources, instance, key: str, *names: str, **kw):  # type: ignore[no-untyped-def]
    return dg.materialize(
        assets,
        partition_key=key,
        resources=resources,
        instance=instance,
        selection=list(names or ("bars_15m", "feature_matrix", "triple_barrier_labels")),
        **kw,
    )


def test_every_blocking_verdict_comes_from_a_blocking_spec(tmp_path: Path) -> None:
    """On every check the graph evaluates, the spec's blocking flag (carried by the evaluation)
    agrees with the verdict's (ERROR severity), and the blocking ones are the checks that say
    the data is wrong."""
    assets, resources, instance = _setup(tmp_path)
    assert _month(assets, resources, instance, JAN, "bars_15m").success
    result = _month(
        assets,
        resources,
        instance,
        FEB,
        "bars_15m",
        "bars_60m",
        "bars_1d",
        "feature_matrix",
        "triple_barrier_labels",
    )
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 5 + 2 + 2 + 5 + 2
    for e in evaluations:
        assert e.blocking == (e.severity is dg.AssetCheckSeverity.ERROR), e.check_name
        assert e.partition == FEB  # evaluated, and recorded, per month
    assert {(e.asset_key.to_user_string(), e.check_name) for e in evaluations if e.blocking} == (
        BLOCKING
    )
