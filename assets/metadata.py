"""How the assets present themselves in the UI: who owns each group, figures to four
significant digits, counts as integers, and column schemas taken from the core's schemas.

Every asset also carries a ``code_version``, a constant string next to its definition. Bump it
when the asset's logic changes, that is when the same inputs would now give a different output
(a new rule, another formula, a column added or renamed), and only then: the UI then marks what
the old logic materialized as stale. A refactor that changes no output keeps its version.
"""

import re
from collections.abc import Mapping

import dagster as dg
import polars as pl

OWNERS: dict[str, list[str]] = {
    "market_data": ["team:data"],
    "research": ["team:research"],
    "training": ["team:research"],
    "backtest": ["team:trading"],
    "live": ["team:trading"],
}
"""The owners of each asset group: data owns the bars, research the features, labels and
models, trading the backtest and the live session."""

SIGNIFICANT_DIGITS = 4
_COUNT_NAMES = frozenset({"rows", "n", "clusters", "reads", "trials", "folds", "closed"})


def is_count(name: str) -> bool:
    """Whether the figure ``name`` counts something: its last ``_``/``.`` segment is one of
    rows, n, clusters, reads, trials, folds or closed (``oos_n``, ``all.rows``,
    ``gate_auc_within_fold_clusters``, ``n_trials``, ``trades_closed``)."""
    return re.split(r"[._]", name)[-1] in _COUNT_NAMES


def figure(value: float) -> dg.MetadataValue:
    """A float to four significant digits: the UI would show all seventeen, and the digits past
    the fourth are noise to whoever reads them."""
    return dg.MetadataValue.float(float(f"{value:.{SIGNIFICANT_DIGITS}g}"))


def count(name: str, value: float) -> dg.MetadataValue:
    """A count the core carries as a float (its metric dicts are all floats), as an integer."""
    if not float(value).is_integer():
        raise ValueError(f"{name} = {value!r} is named as a count but is not a whole number")
    return dg.MetadataValue.int(int(value))


def figures(values: Mapping[str, float], prefix: str = "") -> dict[str, dg.MetadataValue]:
    """``values`` as metadata (keys prefixed with ``prefix``): counts (:func:`is_count`) as
    integers, USD amounts (``*_usd``) to the cent, the other figures to four significant
    digits."""
    return {f"{prefix}{k}": _shown(k, v) for k, v in values.items()}


def _shown(name: str, value: float) -> dg.MetadataValue:
    if is_count(name):
        return count(name, value)
    if name.endswith("_usd"):
        return dg.MetadataValue.float(round(value, 2))  # money to the cent
    return figure(value)


def readable(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` for a markdown table: float columns to four significant digits, float columns
    that count (:func:`is_count`) as integers."""
    return frame.with_columns(
        pl.col(c).cast(pl.Int64) if is_count(c) else pl.col(c).round_sig_figs(SIGNIFICANT_DIGITS)
        for c, t in frame.schema.items()
        if t.is_float()
    )


def table_schema(
    columns: Mapping[str, pl.DataType], descriptions: Mapping[str, str]
) -> dg.TableSchema:
    """The ``dagster/column_schema`` of a frame with ``columns`` (name -> polars type); every
    column must be described."""
    missing = [c for c in columns if c not in descriptions]
    if missing:
        raise ValueError(f"columns without a description: {missing}")
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, str(dtype), description=descriptions[name])
            for name, dtype in columns.items()
        ]
    )


def column_schema(schema: dg.TableSchema) -> dict[str, dg.TableSchema]:
    """Definition metadata holding ``schema`` under the key the UI reads."""
    return {"dagster/column_schema": schema}
