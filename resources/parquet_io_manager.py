"""Large frames (features, labels) as Parquet files, one per asset partition, on a local disk
or on S3-compatible object storage."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
import polars as pl
from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs

from pipelines.data.object_store import is_remote, local_path, storage_options
from pipelines.secrets import redact_uri

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class PolarsParquetIOManager(dg.ConfigurableIOManager):  # type: ignore[misc]
    """Stores polars frames as ``<base_dir>/<asset>/<partition>.parquet`` (``all.parquet``
    for an unpartitioned asset).

    ``base_dir`` is a local directory (a relative one is taken from the project directory) or
    an ``s3://bucket/prefix`` URL on any S3-compatible server. Credentials and the endpoint
    are read from the environment when a frame is stored or loaded, never from this config
    (the UI shows it): ``QUANTDAG_S3_ACCESS_KEY_ID``, ``QUANTDAG_S3_SECRET_ACCESS_KEY``,
    ``QUANTDAG_S3_ENDPOINT_URL`` or the ``AWS_`` equivalents (see
    :mod:`pipelines.data.object_store`); a ``base_dir`` holding a credential is refused.

    A reader never sees a half-written frame: locally a frame is written to a temporary file
    beside its place and renamed over it; on S3 an object appears whole when its single PUT
    (or its multipart upload, above 100 MB) completes, so no temporary object is written.
    """

    base_dir: str

    def store(self) -> ParquetStore:
        """The store ``base_dir`` names, with the environment's credentials."""
        options = storage_options(self.base_dir, os.environ)
        if not is_remote(self.base_dir):
            return LocalParquetStore(local_path(self.base_dir, PROJECT_ROOT))
        fs, root = url_to_fs(self.base_dir.rstrip("/"), **options)
        return ObjectParquetStore(fs, root)

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        where = self.store().write(context.asset_key.path, partition, obj)
        context.add_output_metadata({"path": redact_uri(where), "rows": obj.height})

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        """All requested partitions. An input with ``allow_missing_partitions`` metadata (an
        unpartitioned consumer of every partition) skips partitions never materialized and
        logs which; otherwise a missing partition is an error naming it and what to run."""
        keys: Sequence[str | None] = (
            context.asset_partition_keys if context.has_asset_partitions else [None]
        )
        store = self.store()
        name = context.asset_key.to_user_string()
        path = context.asset_key.path
        stored = store.stored(path, keys)
        missing = [k for k in keys if k not in stored]
        where = redact_uri(store.directory(path))
        if missing and not (context.definition_metadata or {}).get("allow_missing_partitions"):
            shown = ", ".join(k or "(unpartitioned)" for k in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            partition = f" --partition {missing[0]}" if missing[0] else ""
            raise FileNotFoundError(
                f"{name}: no stored frame for {shown}{more} under {where}; materialize "
                f"{'those partitions' if missing[0] else 'the asset'} first (in the UI, or "
                f"`dagster asset materialize -m quantdag.definitions --select {name}"
                f"{partition}`), or point base_dir (QUANTDAG_PARQUET_URL) where they were written"
            )
        present = [k for k in keys if k in stored]
        if missing:
            context.log.info(
                f"{name}: {len(present)} partitions stored, "
                f"{len(missing)} never materialized and left out"
            )
        if not present:
            raise FileNotFoundError(
                f"{name}: no partition has been materialized yet under {where}; materialize "
                "some first"
            )
        return pl.concat([store.read(path, k) for k in present], how="vertical")


class ParquetStore(Protocol):
    """One frame per asset partition; ``asset`` is an asset key's path."""

    def directory(self, asset: Sequence[str]) -> str:
        """Where the asset's frames are, as a path or URL (no credential in it)."""
        ...

    def write(self, asset: Sequence[str], partition: str | None, frame: pl.DataFrame) -> str:
        """Store ``frame`` whole (replacing the partition's frame); returns where."""
        ...

    def stored(self, asset: Sequence[str], partitions: Sequence[str | None]) -> set[str | None]:
        """Those of ``partitions`` that have a stored frame."""
        ...

    def read(self, asset: Sequence[str], partition: str | None) -> pl.DataFrame:
        """The stored frame of ``partition``."""
        ...


def _name(partition: str | None) -> str:
    return f"{partition or 'all'}.parquet"


class LocalParquetStore:
    """Frames under a local directory, written through a temporary file and a rename."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, asset: Sequence[str]) -> str:
        return str(self.root.joinpath(*asset))

    def write(self, asset: Sequence[str], partition: str | None, frame: pl.DataFrame) -> str:
        path = self.root.joinpath(*asset, _name(partition))
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own: two writers of one partition never share a temporary file.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            frame.write_parquet(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return str(path)

    def stored(self, asset: Sequence[str], partitions: Sequence[str | None]) -> set[str | None]:
        return {k for k in partitions if self.root.joinpath(*asset, _name(k)).exists()}

    def read(self, asset: Sequence[str], partition: str | None) -> pl.DataFrame:
        return pl.read_parquet(self.root.joinpath(*asset, _name(partition)))


class ObjectParquetStore:
    """Frames as objects in a bucket (``root`` is ``bucket/prefix``), through fsspec."""

    def __init__(self, fs: AbstractFileSystem, root: str) -> None:
        self.fs, self.root = fs, root.strip("/")

    def _key(self, asset: Sequence[str], partition: str | None) -> str:
        return "/".join([self.root, *asset, _name(partition)])

    def directory(self, asset: Sequence[str]) -> str:
        return str(self.fs.unstrip_protocol("/".join([self.root, *asset]))) + "/"

    def write(self, asset: Sequence[str], partition: str | None, frame: pl.DataFrame) -> str:
        key = self._key(asset, partition)
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        # One PUT of the whole object (a multipart upload above 100 MB, aborted on failure):
        # visible whole or not at all, and nothing temporary to clean up.
        self._call(self.fs.pipe_file, key, buffer.getvalue())
        return str(self.fs.unstrip_protocol(key))

    def stored(self, asset: Sequence[str], partitions: Sequence[str | None]) -> set[str | None]:
        directory = "/".join([self.root, *asset])
        # One listing for every partition rather than a request per partition.
        try:
            listed = {p.rstrip("/") for p in self._call(self.fs.ls, directory, detail=False)}
        except FileNotFoundError:
            listed = set()
        if not listed:
            bucket = self.root.split("/", 1)[0]
            if not self._call(self.fs.exists, bucket):
                raise FileNotFoundError(
                    f"{self.fs.unstrip_protocol(bucket)}: the bucket does not exist, or these "
                    "credentials cannot see it: create it, or fix QUANTDAG_PARQUET_URL, the "
                    "endpoint (QUANTDAG_S3_ENDPOINT_URL) or the credentials "
                    "(QUANTDAG_S3_ACCESS_KEY_ID / QUANTDAG_S3_SECRET_ACCESS_KEY)"
                )
        return {k for k in partitions if self._key(asset, k) in listed}

    def read(self, asset: Sequence[str], partition: str | None) -> pl.DataFrame:
        data = self._call(self.fs.cat_file, self._key(asset, partition))
        return pl.read_parquet(io.BytesIO(data))

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """``method(*args)``, a refusal of the server turned into an error that says what to
        check (naming the bucket, never a credential)."""
        try:
            return method(*args, **kwargs)
        except PermissionError as exc:
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise PermissionError(
                f"{self.fs.unstrip_protocol(self.root)}: access denied ({first}): check "
                "QUANTDAG_S3_ACCESS_KEY_ID / QUANTDAG_S3_SECRET_ACCESS_KEY (or "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the host's role) and that they "
                "may list, read and write the bucket"
            ) from None
