"""``make run``: materialize the whole asset graph for every month the source holds, then print
what was stored and quarantined per symbol."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any
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
    # MLflow's progress bars and store-migration notices would bury the summary.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
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
    holdout = training.asset_materializations_for_node("holdout_predictions")[0].metadata
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
    for line in research_summary(quality, decision, holdout, report):
        print(line)
    print(f"Backtest report: {report['report'].value}")
    print("Open the Dagster UI with `make dev` to see assets, partitions and checks.")
    return 0


def _v(meta: Mapping[str, Any], key: str) -> Any:
    return meta[key].value if key in meta else None


def _fmt(value: Any, spec: str) -> str:
    return "undefined" if value is None else format(value, spec)


HOLDOUT_SEGMENTS = (
    ("out_of_time", "out of time (every row from its start)"),
    ("symbol", "held-out symbols in the training period (new names, not a new period)"),
)


def _holdout_segment(holdout: Mapping[str, Any], key: str, what: str) -> str:
    rows = _v(holdout, f"{key}.rows")
    if not rows:
        return f"{what}: no rows"
    return (
        f"{what}: {int(rows)} bars, AUC {_fmt(_v(holdout, f'{key}.auc'), '.3f')} "
        f"(SE {_fmt(_v(holdout, f'{key}.auc_se'), '.3f')}), gain over the base rate "
        f"{_fmt(_v(holdout, f'{key}.log_loss_skill'), '+.5f')} nats a bar (z "
        f"{_fmt(_v(holdout, f'{key}.log_loss_skill_z'), '+.2f')})"
    )


def research_summary(
    quality: Mapping[str, Any],
    decision: Mapping[str, Any],
    holdout: Mapping[str, Any],
    report: Mapping[str, Any],
) -> list[str]:
    """The lines of ``make run``'s summary on training, the gate, the holdout and the
    backtest, from the assets' metadata."""
    deployable = bool(_v(decision, "deployable"))
    lines = [
        f"Training (quick mode): {_v(quality, 'folds')} walk-forward folds on "
        f"{_v(quality, 'rows')} out-of-sample bars: within-fold AUC "
        f"{_fmt(_v(quality, 'gate_auc_within_fold'), '.3f')} (SE "
        f"{_fmt(_v(quality, 'gate_auc_within_fold_se'), '.3f')}), log loss "
        f"{_fmt(_v(quality, 'oos_log_loss'), '.4f')}, gain over the base-rate forecast "
        f"{_fmt(_v(quality, 'gate_log_loss_skill'), '+.5f')} nats a bar (z "
        f"{_fmt(_v(quality, 'gate_log_loss_skill_z'), '+.2f')}).",
        f"Model version {_v(decision, 'version')}: "
        + ("promoted to champion" if _v(decision, "promoted") else "not promoted")
        + f" ({_v(decision, 'reason')}).",
    ]
    if not deployable:
        lines.append(
            "  NOT DEPLOYABLE: it failed the skill gate; the backtest below is of a model that "
            "may not trade, shown for research only."
        )
    if _v(holdout, "all.rows"):
        lines.append(
            f"Holdout (read once, by v{_v(holdout, 'model_version')}; model versions that "
            f"have read it: {_fmt(_v(holdout, 'reads'), '.0f')}): "
            + "; ".join(_holdout_segment(holdout, k, what) for k, what in HOLDOUT_SEGMENTS)
            + "."
        )
    else:
        lines.append(
            "Holdout: no rows (none declared in research.holdout for this environment, or the "
            "data holds none of it)."
        )
    lines.append(
        f"Backtest ({_v(report, 'configuration')}, out of sample, with costs): total return "
        f"{_fmt(_v(report, 'total_return'), '+.2%')}, Sharpe of daily returns "
        f"{_fmt(_v(report, 'sharpe_daily_annualised'), '.2f')} annualised, deflated Sharpe "
        f"{_fmt(_v(report, 'deflated_sharpe'), '.2f')} over N = "
        f"{_fmt(_v(report, 'n_trials'), '.0f')} trials, PBO {_fmt(_v(report, 'pbo'), '.2f')}, "
        f"max drawdown {_fmt(_v(report, 'max_drawdown'), '.2%')}, "
        f"{_fmt(_v(report, 'trades_trades'), '.0f')} closed trades; beta "
        f"{_fmt(_v(report, 'beta'), '.2f')} and alpha {_fmt(_v(report, 'alpha'), '+.2%')} a "
        "year against the benchmark."
    )
    held = sorted({k.split("_")[1] for k in report if k.startswith("holdout_")})
    for segment in held:
        lines.append(
            f"  on the holdout ({segment}): total return "
            f"{_fmt(_v(report, f'holdout_{segment}_total_return'), '+.2%')}, "
            f"{_fmt(_v(report, f'holdout_{segment}_trades_trades'), '.0f')} closed trades."
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
