"""Which months the training set may use: gaps and failed blocking checks are refused, or left
out and named with ``allow_gaps``; and the check table's blocking flag reaches the verdicts."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from pipelines.checks import CheckDefinition, check_table
from pipelines.months import (
    MonthsRefusedError,
    PartitionRecord,
    PartitionState,
    rows_in_windows,
    select_training_months,
)

pytestmark = pytest.mark.unit

KEYS = [f"2019-{m:02d}-01" for m in range(1, 13)]
OK = PartitionRecord(PartitionState.MATERIALIZED)
ASSETS = ("bars_15m", "feature_matrix", "triple_barrier_labels")


def _clean(months: list[str]) -> dict[str, dict[str, PartitionRecord]]:
    return {a: dict.fromkeys(months, OK) for a in ASSETS}


def test_a_clean_span_is_used_whole_and_only_the_span() -> None:
    # Months before the first and after the last held month (the partitions not yet reached
    # or never wanted) are outside the span, not gaps.
    months = select_training_months(KEYS, _clean(KEYS[2:5]), allow_gaps=False)
    assert months.used == ("2019-03-01", "2019-04-01", "2019-05-01")
    assert months.left_out == {}


def test_a_month_missing_for_every_asset_in_the_middle_is_refused_by_name() -> None:
    records = _clean(["2019-01-01", "2019-02-01", "2019-04-01"])
    with pytest.raises(MonthsRefusedError) as err:
        select_training_months(KEYS, records, allow_gaps=False)
    text = str(err.value)
    assert "2019-03-01: bars_15m never materialized; feature_matrix never materialized" in text
    assert "allow_gaps: true" in text and "Re-materialize" in text
    assert "2019-02-01:" not in text and "2019-04-01:" not in text


def test_features_without_labels_is_a_gap_even_at_the_end_of_the_span() -> None:
    records = _clean(["2019-01-01", "2019-02-01"])
    records["feature_matrix"]["2019-03-01"] = OK
    with pytest.raises(MonthsRefusedError, match="2019-03-01: bars_15m never materialized; "):
        select_training_months(KEYS, records, allow_gaps=False)
    months = select_training_months(KEYS, records, allow_gaps=True)
    assert months.used == ("2019-01-01", "2019-02-01")
    assert months.left_out == {
        "2019-03-01": ("bars_15m never materialized", "triple_barrier_labels never materialized")
    }


def test_a_failed_blocking_check_refuses_its_month_and_names_the_check() -> None:
    records = _clean(KEYS[:3])
    records["bars_15m"]["2019-02-01"] = PartitionRecord(
        PartitionState.MATERIALIZED, ("rows_accounted", "bar_integrity")
    )
    with pytest.raises(MonthsRefusedError) as err:
        select_training_months(KEYS, records, allow_gaps=False)
    assert "2019-02-01: bars_15m failed blocking check rows_accounted, bar_integrity" in str(
        err.value
    )
    months = select_training_months(KEYS, records, allow_gaps=True)
    assert months.used == ("2019-01-01", "2019-03-01")
    assert months.describe_left_out() == (
        "2019-02-01: bars_15m failed blocking check rows_accounted, bar_integrity"
    )


def test_failed_and_running_materializations_are_unusable_and_say_so() -> None:
    records = _clean(KEYS[:2])
    records["feature_matrix"]["2019-03-01"] = PartitionRecord(PartitionState.FAILED)
    records["triple_barrier_labels"]["2019-01-01"] = PartitionRecord(PartitionState.IN_PROGRESS)
    months = select_training_months(KEYS, records, allow_gaps=True)
    assert months.used == ("2019-02-01",)
    assert months.left_out["2019-01-01"] == ("triple_barrier_labels being materialized",)
    assert "feature_matrix latest materialization failed" in months.left_out["2019-03-01"]


def test_nothing_usable_is_refused_even_with_allow_gaps() -> None:
    with pytest.raises(MonthsRefusedError, match="no month of bars_15m, feature_matrix"):
        select_training_months(KEYS, {a: {} for a in ASSETS}, allow_gaps=True)
    records = _clean(["2019-01-01"])
    records["feature_matrix"]["2019-01-01"] = PartitionRecord(
        PartitionState.MATERIALIZED, ("stream_parity",)
    )
    with pytest.raises(MonthsRefusedError, match="no usable month in 2019-01-01 to 2019-01-01"):
        select_training_months(KEYS, records, allow_gaps=True)


def test_records_of_unknown_months_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"months \['2020-01-01'\]"):
        select_training_months(KEYS, {"feature_matrix": {"2020-01-01": OK}}, allow_gaps=True)


def test_rows_in_windows_keeps_only_the_months_used() -> None:
    ts = [datetime(2019, m, 15, 15, tzinfo=UTC) for m in (1, 2, 3)]
    frame = pl.DataFrame({"ts": ts, "x": [1, 2, 3]})
    jan = (datetime(2019, 1, 1, 5, tzinfo=UTC), datetime(2019, 2, 1, 5, tzinfo=UTC))
    mar = (datetime(2019, 3, 1, 5, tzinfo=UTC), datetime(2019, 4, 1, 4, tzinfo=UTC))
    assert rows_in_windows(frame, [jan, mar])["x"].to_list() == [1, 3]
    assert rows_in_windows(frame, []).height == 0


def test_a_definition_gives_its_blocking_flag_to_every_verdict() -> None:
    table = check_table(
        CheckDefinition("wrong_data", "the data is wrong", blocking=True),
        CheckDefinition("odd_data", "the data looks odd", blocking=False),
    )
    assert table["wrong_data"].outcome(False, {}).blocking is True
    assert table["odd_data"].outcome(False, {"n": 1}).blocking is False
    with pytest.raises(ValueError, match="'odd_data' is defined twice"):
        check_table(table["odd_data"], table["odd_data"])
