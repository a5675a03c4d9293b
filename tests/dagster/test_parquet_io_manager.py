"""The Parquet IO manager on a local directory: a failed write leaves the stored frame as it was
and no temporary file; a missing partition is an error that says what to run. (The same on
S3-compatible storage: tests/integration/test_parquet_s3.py.)"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from resources import PolarsParquetIOManager

MONTHLY = dg.MonthlyPartitionsDefinition(start_date="2019-01-01", end_date="2019-04-01")


def _output(month: str) -> dg.OutputContext:
    return dg.build_output_context(asset_key=["feature_matrix"], partition_key=month)


def _input(first: str, last: str) -> dg.InputContext:
    return dg.build_input_context(
        asset_key=["feature_matrix"],
        asset_partitions_def=MONTHLY,
        asset_partition_key_range=dg.PartitionKeyRange(first, last),
    )


@pytest.mark.parametrize("prefix", ["", "file://"])
def test_a_failed_write_leaves_the_stored_frame_and_no_temporary_file(
    tmp_path: Path, prefix: str
) -> None:
    manager = PolarsParquetIOManager(base_dir=f"{prefix}{tmp_path}")
    good = pl.DataFrame({"x": [1.0, 2.0]})
    context = _output("2019-01-01")
    manager.handle_output(context, good)
    stored = tmp_path / "feature_matrix" / "2019-01-01.parquet"
    assert context.get_logged_metadata()["path"].value == str(stored)
    unwritable = pl.DataFrame({"x": [object()]}, schema={"x": pl.Object})
    with pytest.raises(pl.exceptions.PolarsError):
        manager.handle_output(_output("2019-01-01"), unwritable)
    assert sorted(p.name for p in stored.parent.iterdir()) == ["2019-01-01.parquet"]
    assert_frame_equal(manager.load_input(_input("2019-01-01", "2019-01-01")), good)


def test_a_missing_local_partition_names_it_and_the_command(tmp_path: Path) -> None:
    manager = PolarsParquetIOManager(base_dir=str(tmp_path))
    manager.handle_output(_output("2019-02-01"), pl.DataFrame({"x": [1]}))
    with pytest.raises(FileNotFoundError) as err:
        manager.load_input(_input("2019-01-01", "2019-03-01"))
    assert str(err.value).startswith(
        f"feature_matrix: no stored frame for 2019-01-01, 2019-03-01 under "
        f"{tmp_path / 'feature_matrix'}; materialize those partitions first"
    )
    assert "--select feature_matrix --partition 2019-01-01" in str(err.value)
