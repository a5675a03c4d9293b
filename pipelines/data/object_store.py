"""Where files live: a local directory or an S3-compatible bucket (AWS S3, MinIO, Ceph...).

A location is a local path or an ``s3://bucket/prefix`` URL. Credentials and the endpoint come
from the environment only, never from the URL, a settings file or Dagster config (the UI shows
those):

======================================  ==============================================
``QUANTDAG_S3_ACCESS_KEY_ID``           access key (with ``QUANTDAG_S3_SECRET_ACCESS_KEY``)
``QUANTDAG_S3_SECRET_ACCESS_KEY``       secret key
``QUANTDAG_S3_SESSION_TOKEN``           session token of temporary credentials (optional)
``QUANTDAG_S3_ENDPOINT_URL``            a server other than AWS, e.g. ``http://minio:9000``
``QUANTDAG_S3_REGION``                  the bucket's region (optional)
======================================  ==============================================

Without the ``QUANTDAG_S3_`` keys, botocore's own chain applies: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws``, then the
instance's or pod's role; the endpoint falls back to ``AWS_ENDPOINT_URL_S3`` then
``AWS_ENDPOINT_URL``, the region to ``AWS_REGION`` then ``AWS_DEFAULT_REGION``. The
``QUANTDAG_S3_`` names let the Parquet store use other credentials than the host's AWS ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.secrets import redact_uri

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)$")
SUPPORTED_SCHEMES = ("s3",)


class LocationError(ValueError):
    """A storage location that cannot be used as given; the message says how to fix it."""


def scheme_of(location: str) -> str | None:
    """The URL scheme of ``location`` (``"s3"``), or None for a local path (``file://``
    URLs count as local paths)."""
    match = _SCHEME.match(location)
    if match is None or match["scheme"].lower() == "file":
        return None
    return match["scheme"].lower()


def is_remote(location: str) -> bool:
    """Whether ``location`` is an object-storage URL rather than a local path."""
    return scheme_of(location) is not None


def check_location(location: str) -> None:
    """Refuse a location that cannot be used or that carries a credential.

    Example: ``check_location("s3://quant-data/parquet")`` passes;
    ``check_location("s3://AKIA...:secret@quant-data/parquet")`` raises :class:`LocationError`.
    """
    scheme = scheme_of(location)
    if scheme is None:
        return
    if scheme not in SUPPORTED_SCHEMES:
        raise LocationError(
            f"{redact_uri(location)}: the {scheme}:// scheme is not supported; use a local "
            "path or an s3://bucket/prefix URL (any S3-compatible server, with "
            "QUANTDAG_S3_ENDPOINT_URL)"
        )
    rest = location.split("://", 1)[1]
    bucket = rest.split("/", 1)[0]
    if "@" in bucket or "?" in rest or not bucket:
        raise LocationError(
            f"{redact_uri(location)}: write the location as s3://bucket/prefix, with no user "
            "name, key or query in it; put the credentials in the environment "
            "(QUANTDAG_S3_ACCESS_KEY_ID and QUANTDAG_S3_SECRET_ACCESS_KEY, or AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY) and the server in QUANTDAG_S3_ENDPOINT_URL"
        )


def s3_options(environ: Mapping[str, str]) -> dict[str, Any]:
    """s3fs options from ``environ`` (see the module's docstring for the variables).

    Listings are not cached: another host may write a partition between two reads.

    Example: ``{"QUANTDAG_S3_ACCESS_KEY_ID": "k", "QUANTDAG_S3_SECRET_ACCESS_KEY": "s",
    "QUANTDAG_S3_ENDPOINT_URL": "http://127.0.0.1:9000"}`` gives ``key``, ``secret`` and
    ``client_kwargs={"endpoint_url": "http://127.0.0.1:9000"}``."""
    options: dict[str, Any] = {"use_listings_cache": False}
    key = environ.get("QUANTDAG_S3_ACCESS_KEY_ID", "")
    secret = environ.get("QUANTDAG_S3_SECRET_ACCESS_KEY", "")
    if bool(key) != bool(secret):
        missing = "QUANTDAG_S3_SECRET_ACCESS_KEY" if key else "QUANTDAG_S3_ACCESS_KEY_ID"
        raise LocationError(
            f"{missing} is not set: set QUANTDAG_S3_ACCESS_KEY_ID and "
            "QUANTDAG_S3_SECRET_ACCESS_KEY together, or neither (then AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY or the host's role apply)"
        )
    if key:
        options["key"], options["secret"] = key, secret
        if token := environ.get("QUANTDAG_S3_SESSION_TOKEN"):
            options["token"] = token
    client: dict[str, str] = {}
    endpoint = _first(
        environ, "QUANTDAG_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"
    )
    if endpoint:
        client["endpoint_url"] = endpoint
    region = _first(environ, "QUANTDAG_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
    if region:
        client["region_name"] = region
    if client:
        options["client_kwargs"] = client
    return options


def storage_options(location: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """The fsspec options of ``location``: :func:`s3_options` for an ``s3://`` URL, none for a
    local path. Raises :class:`LocationError` for a location :func:`check_location` refuses."""
    check_location(location)
    return s3_options(environ) if scheme_of(location) == "s3" else {}


def local_path(location: str, root: Path | None = None) -> Path:
    """A local location as a path: ``file://`` removed, a relative one taken from ``root``."""
    path = Path(location.removeprefix("file://"))
    return path if path.is_absolute() or root is None else root / path


def _first(environ: Mapping[str, str], *names: str) -> str:
    return next((environ[n] for n in names if environ.get(n)), "")
