"""Blocking checks block: a check that says "this data is wrong" is a blocking Dagster check, and
the training set refuses a month that failed one, or that was never materialized, unless
``allow_gaps`` (then it names the months it left out). On the 15-minute sample, in process."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
from pydantic import PrivateAttr

from assets.training import build_training_set_asset
from pipelines.data.store import BarStore
from pipelines.months import MonthsRefusedError
from resources import TradingDatabaseResource
from tests.dagster.test_materialize import _sample_setup

JAN, FEB = "2019-01-01", "2019-02-01"
BLOCKING = {
    ("bars_15m", "rows_accounted"),
    ("bars_15m", "sessions_have_bars"),
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


class DuplicatingBarStore(BarStore):
    """A broken trading database: reading bars returns the first bar twice, as a table that
    lost its unique key would."""

    def read_bars(self, **kwargs: Any) -> pl.DataFrame:
        bars = super().read_bars(**kwargs)
        return pl.concat([bars, bars.head(1)])


class BrokenTradingDatabaseResource(TradingDatabaseResource):
    _broken: BarStore | None = PrivateAttr(default=None)

    def store(self) -> BarStore:
        if self._broken is None:
            self._broken = DuplicatingBarStore(self.url)
            self._broken.migrate()
        return self._broken


def _setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    bar_assets, research, resources, instance = _sample_setup(tmp_path)
    assets = [*bar_assets, *research, build_training_set_asset([bar_assets[0], *research])]
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


def _train(assets, resources, instance, *, allow_gaps: bool = False):  # type: ignore[no-untyped-def]
    return dg.materialize(
        assets,
        resources=resources,
        instance=instance,
        selection=["training_set", "holdout_set"],
        run_config={"ops": {"training_set": {"config": {"allow_gaps": allow_gaps}}}},
    )


def _warnings(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING
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
    assert len(evaluations) == 6 + 2 + 2 + 5 + 2
    for e in evaluations:
        assert e.blocking == (e.severity is dg.AssetCheckSeverity.ERROR), e.check_name
        assert e.partition == FEB  # evaluated, and recorded, per month
    assert {(e.asset_key.to_user_string(), e.check_name) for e in evaluations if e.blocking} == (
        BLOCKING
    )


def test_training_refuses_a_month_whose_blocking_check_failed(tmp_path: Path) -> None:
    assets, resources, instance = _setup(tmp_path)
    for key in (JAN, FEB):
        assert _month(assets, resources, instance, key).success
    assert _train(assets, resources, instance).asset_materializations_for_node("training_set")[
        0
    ].metadata["months"].value == [JAN, FEB]

    # February's bars again, read back through a broken store: bar_integrity fails for real,
    # and being blocking, fails the run.
    broken = {
        **resources,
        "trading_db": BrokenTradingDatabaseResource(url=resources["trading_db"].url),
    }
    rerun = _month(assets, broken, instance, FEB, "bars_15m", raise_on_error=False)
    assert not rerun.success
    failed = [e for e in rerun.get_asset_check_evaluations() if not e.passed]
    assert [(e.check_name, e.partition) for e in failed] == [("bar_integrity", FEB)]

    with pytest.raises(MonthsRefusedError) as refused:
        _train(assets, resources, instance)
    text = str(refused.value)
    assert f"{FEB}: bars_15m failed blocking check bar_integrity" in text
    assert "allow_gaps: true" in text and JAN + ":" not in text

    allowed = _train(assets, resources, instance, allow_gaps=True)
    meta = allowed.asset_materializations_for_node("training_set")[0].metadata
    assert meta["months"].value == [JAN]
    assert meta["left_out_months"].value == {FEB: "bars_15m failed blocking check bar_integrity"}
    assert meta["end"].value < str(datetime(2019, 2, 1, tzinfo=UTC))  # no February row
    assert f"{FEB}: bars_15m failed blocking check bar_integrity" in _warnings(instance, allowed)

    # The latest evaluation decides: February re-materialized from the sound store is used.
    assert _month(assets, resources, instance, FEB, "bars_15m").success
    again = _train(assets, resources, instance).asset_materializations_for_node("training_set")
    assert again[0].metadata["months"].value == [JAN, FEB]


def test_training_refuses_a_month_never_materialized(tmp_path: Path) -> None:
    """January has bars only (its features and labels were never materialized), February
    everything: January is in the span (the bars hold it) and is refused, or left out with
    ``allow_gaps``. (A month with no bars at all cannot stand in for a gap any more: its
    bars fail the blocking sessions_have_bars check.)"""
    assets, resources, instance = _setup(tmp_path)
    assert _month(assets, resources, instance, JAN, "bars_15m").success
    assert _month(assets, resources, instance, FEB).success

    gap = f"{JAN}: feature_matrix never materialized; triple_barrier_labels never materialized"
    with pytest.raises(MonthsRefusedError) as refused:
        _train(assets, resources, instance)
    assert gap in str(refused.value)
    assert f"refuses 1 of 2 months ({JAN} to {FEB})" in str(refused.value)

    allowed = _train(assets, resources, instance, allow_gaps=True)
    meta = allowed.asset_materializations_for_node("training_set")[0].metadata
    assert meta["months"].value == [FEB]
    assert meta["left_out_months"].value == {
        JAN: "feature_matrix never materialized; triple_barrier_labels never materialized"
    }
    assert gap in _warnings(instance, allowed)
