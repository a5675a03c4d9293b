"""``make run``: materialize the whole asset graph for every month the source holds, then print
what was stored and quarantined per symbol."""

from __future__ import annotations

import argparse
import os
import sys
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl

from assets.partitions import monthly_partitions
from pipelines.bars.calendar import NEW_YORK
from pipelines.config import FileSourceConfig
from pipelines.secrets import redact_uri
from quantdag.definitions import build_definitions
from quantdag.project import Project, load_project
from quantdag.resources import build_resources


def partition_keys(project: Project) -> list[str]:
    """Months holding source data (file sources), or every month since ``history_start``."""
    partitions = monthly_partitions(project.universe)
    keys = partitions.get_partition_keys(dynamic_partitions_store=None)
    if not isinstance(project.env.source, FileSourceConfig):
        return keys
    source = build_resources(project)["market_data"].source(project.universe)
    first, last = source.available_range()
    lo = first.astimezone(ZoneInfo(NEW_YORK)).strftime("%Y-%m-01")
    hi = last.astimezone(ZoneInfo(NEW_YORK)).strftime("%Y-%m-01")
    return [k for k in keys if lo <= k <= hi]


def summary(project: Project) -> pl.DataFrame:
    # Outside a run the resource holds an EnvVar reference: resolve it as Dagster does.
    store = build_resources(project)["trading_db"].process_config_and_initialize().store()
    bars = store.bar_counts().pivot(on="timeframe", index="symbol", values="bars")
    quarantine = store.quarantine_counts()
    if quarantine.height:
        q = quarantine.with_columns(pl.col("symbol").fill_null("<none>")).pivot(
            on="rule", index="symbol", values="rows"
        )
        q = q.with_columns(quarantined=pl.sum_horizontal(pl.exclude("symbol")))
    else:
        q = pl.DataFrame({"symbol": bars["symbol"], "quarantined": 0})
    base = f"{project.universe.base_timeframe}"
    ordered = [base, *(t.label for t in project.universe.target_timeframes)]
    table = bars.join(q, on="symbol", how="full", coalesce=True).fill_null(0).sort("symbol")
    rest = [c for c in table.columns if c not in ("symbol", *ordered)]
    return table.select("symbol", *[c for c in ordered if c in table.columns], *rest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--partition", action="append", help="only these months (YYYY-MM-01)")
    args = parser.parse_args(argv)
    project = load_project()
    defs = build_definitions(project)
    job = defs.resolve_job_def("all_assets_job")
    keys = args.partition or partition_keys(project)
    instance = dg.DagsterInstance.get()
    print(
        f"QuantDAG ({project.environment}): materializing {len(keys)} monthly partitions "
        f"of {project.universe.name}: {', '.join(keys)}"
    )
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    # Bars of every month first: labels near a month's end need the next month's bars, so the
    # result does not depend on whether the months were loaded before (a second run).
    for key in keys:
        bars = defs.resolve_job_def("market_data_job").execute_in_process(
            partition_key=key, instance=instance, run_config=quiet
        )
        if not bars.success:
            print(f"market data for {key} failed", file=sys.stderr)
            return 1
    for key in keys:
        result = job.execute_in_process(partition_key=key, instance=instance, run_config=quiet)
        print(f"  {key}: run {result.run_id} {'succeeded' if result.success else 'FAILED'}")
        if not result.success:
            print(f"partition {key} failed", file=sys.stderr)
            return 1
        for ev in result.get_asset_check_evaluations():
            if not ev.passed:
                detail = {k: v.value for k, v in ev.metadata.items()}
                print(
                    f"  check {ev.asset_key.to_user_string()}:{ev.check_name} "
                    f"did not pass ({ev.severity.value}) for {key}: {str(detail)[:200]}"
                )
    training = defs.resolve_job_def("training_job").execute_in_process(
        instance=instance,
        run_config={
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
            "ops": {"walk_forward_models": {"config": {"mode": "quick"}}},
        },
    )
    if not training.success:
        print("training failed", file=sys.stderr)
        return 1
    oos = training.asset_materializations_for_node("walk_forward_models")
    by_key = {m.asset_key.to_user_string(): m.metadata for m in oos}
    decision, quality = by_key["champion_model"], by_key["oos_predictions"]
    backtest = defs.resolve_job_def("backtest_job").execute_in_process(
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    if not backtest.success:
        print("backtest failed", file=sys.stderr)
        return 1
    report = backtest.asset_materializations_for_node("backtest_report")[0].metadata
    table = summary(project)
    with pl.Config(
        tbl_rows=-1, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True
    ):
        print("\nRows stored (per timeframe) and quarantined (per reason), per symbol:")
        print(table)
    where = redact_uri(os.environ.get("QUANTDAG_DATABASE_URL") or project.env.database_url)
    print(f"\nTrading database: {where}")
    print(
        f"Training (quick mode): {quality['folds'].value} walk-forward folds, out-of-sample "
        f"AUC {quality['oos_auc'].value:.3f}, log loss {quality['oos_log_loss'].value:.3f} "
        f"on {quality['rows'].value} bars; model version {decision['version'].value}: "
        f"{'promoted to champion' if decision['promoted'].value else 'kept as challenger'} "
        f"({decision['reason'].value})"
    )
    print(
        f"Backtest (model strategy, out of sample, with costs): total return "
        f"{report['total_return'].value:+.2%}, annualised Sharpe {report['sharpe'].value:.2f}, "
        f"deflated Sharpe {report['deflated_sharpe'].value:.2f}, max drawdown "
        f"{report['max_drawdown'].value:.2%}, {int(report['trades_trades'].value)} closed trades; "
        f"beta {report['beta'].value:.2f} and alpha {report['alpha'].value:+.2%} a year against "
        "the benchmark"
    )
    print(f"Backtest report: {report['report'].value}")
    print("Open the Dagster UI with `make dev` to see assets, partitions and checks.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
