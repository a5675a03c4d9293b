"""Large frames (features, labels) as Parquet files, one per asset partition."""

import os
from pathlib import Path

import dagster as dg
import polars as pl


class PolarsParquetIOManager(dg.ConfigurableIOManager):  # type: ignore[misc]
    """Stores polars frames under ``base_dir/<asset>/<partition>.parquet``; a relative
    ``base_dir`` is taken from the project directory."""

    base_dir: str

    def _root(self) -> Path:
        root = Path(self.base_dir)
        if not root.is_absolute():
            root = Path(__file__).resolve().parent.parent / root
        return root

    def _path(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        return self._root().joinpath(*asset_key.path, f"{partition or 'all'}.parquet")

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        path = self._path(context.asset_key, partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        obj.write_parquet(tmp)
        os.replace(tmp, path)  # readers never see a half-written file
        context.add_output_metadata({"path": str(path), "rows": obj.height})

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        """All requested partitions. An input with ``allow_missing_partitions`` metadata (an
        unpartitioned consumer of every partition) skips partitions never materialized and
        logs which; otherwise a missing partition is an error."""
        keys = context.asset_partition_keys if context.has_asset_partitions else [None]
        paths = [self._path(context.asset_key, k) for k in keys]
        missing = [p for p in paths if not p.exists()]
        name = context.asset_key.to_user_string()
        if missing and not (context.definition_metadata or {}).get("allow_missing_partitions"):
            raise FileNotFoundError(
                f"{name}: no stored frame at {[str(p) for p in missing[:3]]}; "
                "materialize those partitions first"
            )
        present = [p for p in paths if p.exists()]
        if missing:
            context.log.info(
                f"{name}: {len(present)} partitions stored, "
                f"{len(missing)} never materialized and left out"
            )
        if not present:
            raise FileNotFoundError(f"{name}: no partition has been materialized yet")
        return pl.concat([pl.read_parquet(p) for p in present], how="vertical")
