"""``python -m quantdag.metrics``: every metric QuantDAG exports, its type, labels and help
text, as a Markdown table: the live session's (served on ``live.metrics_port``) and the batch
runs' (pushed to the Pushgateway). Read off the registries themselves, so it cannot drift."""

from __future__ import annotations

import sys
from datetime import date

from prometheus_client import CollectorRegistry

from pipelines.live.metrics import LiveMetrics
from pipelines.live.session import SessionResult
from pipelines.ops.pipeline_metrics import (
    CheckVerdict,
    Materialization,
    PipelineRun,
    metric_groups,
)


def live_registry() -> CollectorRegistry:
    """The live session's registry with one sample of every series (labels filled in)."""
    metrics = LiveMetrics(minute_ages=lambda: {"AAPL": 1.0})
    metrics.orders.labels("target").inc()
    metrics.refusals.labels("max_position").inc()
    result = SessionResult(date(2019, 2, 15), 1, shares_sent=2, shares_filled=1)
    result.order_statuses, result.broker_errors = {"filled": 1}, {"503": 1}
    result.slippage_bps, result.rate_limit_remaining = [(1.0, 1)], 199
    metrics.on_result(result)
    return metrics.registry


def pipeline_registries() -> list[tuple[dict[str, str], CollectorRegistry]]:
    """The batch runs' groups for one run that filled every series."""
    meta = {"rows_in": 2, "rows_stored": 1, "quarantined_by_reason": {"ohlc": 1}}
    run = PipelineRun(
        "run",
        "job",
        "SUCCESS",
        0.0,
        1.0,
        [
            Materialization("bars_15m", "2019-01-01", meta, 1.0, 1.0),
            Materialization("oos_predictions", None, {"oos_auc": 0.5}, 1.0, 1.0),
        ],
        [CheckVerdict("bars_15m", "2019-01-01", "no_gaps", True, "ERROR")],
    )
    return metric_groups(run)


def metric_rows() -> list[tuple[str, str, str, str, str]]:
    """(where, name, type, labels, help) of every metric family exported."""
    rows: dict[str, tuple[str, str, str, str, str]] = {}
    sources = [("live", {}, live_registry())]
    sources += [("pipeline (pushed)", key, r) for key, r in pipeline_registries()]
    for where, key, registry in sources:
        for family in registry.collect():
            if family.name.endswith("_created"):
                continue
            labels = sorted(
                {k for s in family.samples for k in s.labels if k not in ("le",)} | set(key)
            )
            name = family.name + ("_total" if family.type == "counter" else "")
            rows.setdefault(
                name, (where, name, family.type, ", ".join(labels), family.documentation)
            )
    return sorted(rows.values())


def main() -> int:
    print("| where | name | type | labels | what |")
    print("|---|---|---|---|---|")
    for row in metric_rows():
        print("| " + " | ".join(f"`{c}`" if i == 1 else c for i, c in enumerate(row)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
