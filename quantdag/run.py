"""``make run``: materialize the whole asset graph for every month the source holds (each
partition of each asset once), then print what was stored and quarantined per symbol.

A run that fails prints its cause in a line or two and exits non-zero (1; 2 for a
configuration error or a refused partition); ``--debug`` adds Dagster's log and the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl

from assets.common import PROGRESS
from assets.partitions import market_partitions
from pipelines.bars.checks import PartitionError
from pipelines.config import ConfigError, FileSourceConfig
from pipelines.data.normalise import SourceError
from pipelines.data.sources import FileBarSource
from pipelines.data.store import StoreError
from pipelines.secrets import redact_uri
from quantdag.project import Project, load_project
from quantdag.resources import build_resources

if TYPE_CHECKING:
    from dagster_shared.error import SerializableErrorInfo

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, SourceError, StoreError, PartitionError)
"""Errors ``make run`` reports in a line (their messages say where and what to do)."""

PROJECT_ERROR_NAMES = frozenset(
    {
        "ConfigError",
        "SourceError",
        "StoreError",
        "PartitionError",
        "CalendarRangeError",
        "AggregationError",
        "FeatureInputError",
        "ProgramError",
        "TransformError",
        "MonthsRefusedError",
        "HoldoutError",
        "ModelError",
        "SplitError",
        "TuningError",
        "EvaluationError",
    }
)
"""The project's error types by name (a failed step's error is known only by its class name)."""


class RunFailed(Exception):
    """A Dagster run of ``make run`` failed; the message is what to print."""


def universe_range(source: FileBarSource, symbols: Sequence[str]) -> tuple[datetime, datetime]:
    """First and last bar start (UTC) of the universe's ``symbols`` in the source's files;
    files of other symbols are not read."""
    spans = source.symbol_spans(list(symbols)).values()
    if not spans:
        raise SourceError(
            f"{source.directory}: no bar of the universe's {len(symbols)} symbols in files "
            f"matching {source.config.pattern!r}; check the source's path and pattern"
        )
    return min(first for first, _ in spans), max(last for _, last in spans)


def partition_keys(project: Project) -> list[str]:
    """The partitions to materialize: with a file source, those holding bars of the universe's
    symbols; else every partition from ``history_start`` (to ``history_end`` when set)."""
    partitions = market_partitions(project.universe)
    keys = list(partitions.get_partition_keys(dynamic_partitions_store=None))
    if not isinstance(project.env.source, FileSourceConfig):
        return keys
    source = build_resources(project)["market_data"].source(project.universe)
    first, last = universe_range(source, project.universe.symbol_names)
    return [
        k
        for k in keys
        if (w := partitions.time_window_for_partition_key(k)).start <= last and w.end > first
    ]


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


def _chain(error: SerializableErrorInfo | None) -> Iterator[SerializableErrorInfo]:
    while error is not None:
        yield error
        error = error.cause


def _message(error: SerializableErrorInfo) -> str:
    text = error.message.strip()
    prefix = f"{error.cls_name}: "
    text = text.split(prefix, 1)[1] if prefix in text else text
    return f"{error.cls_name}: {text}"


def user_error(error: SerializableErrorInfo) -> str:
    """The cause of a failed step in a line: the innermost project error of the chain, else
    the first error that is not Dagster's own."""
    chain = list(_chain(error))
    ours = [e for e in chain if e.cls_name in PROJECT_ERROR_NAMES]
    if ours:
        return _message(ours[-1])
    theirs = [e for e in chain if not (e.cls_name or "").startswith("Dagster")]
    first = _message(theirs[0] if theirs else chain[0]).splitlines()[0]
    return f"{first} (an unexpected error: run with --debug for the traceback)"


def _value(value: Any, limit: int = 5) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        items = [f"{k} {_value(v)}" for k, v in list(value.items())[:limit]]
        more = f", and {len(value) - limit} more" if len(value) > limit else ""
        return "{" + ", ".join(items) + more + "}" if items else "none"
    if isinstance(value, list | tuple):
        shown = ", ".join(_value(v) for v in value[:limit])
        more = f" and {len(value) - limit} more" if len(value) > limit else ""
        return (shown + more) if value else "none"
    text = str(value)
    return text if len(text) <= 160 else text[:157] + "..."


def describe_check(evaluation: dg.AssetCheckEvaluation) -> str:
    """A check's verdict in a line: asset, check, partition, and its summary or key figures."""
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    if "summary" in meta:
        figures = str(meta["summary"])
    else:
        figures = "; ".join(f"{k} {_value(v)}" for k, v in meta.items() if k != "summary")
    verdict = "passed" if evaluation.passed else "FAILED" if evaluation.blocking else "warns"
    where = f" on {evaluation.partition}" if evaluation.partition else ""
    return (
        f"check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} {verdict}{where}: "
        f"{figures}"
    )


def failure(result: dg.ExecuteInProcessResult, what: str, debug: bool) -> str:
    """Why a run failed, in a line or two per failed step (the traceback too with ``debug``)."""
    lines: list[str] = []
    for event in result.get_step_failure_events():
        error = event.event_specific_data.error  # type: ignore[union-attr]
        if error is None:
            lines.append(f"{what}: step {event.step_key} failed (run {result.run_id})")
        elif error.cls_name == "DagsterAssetCheckFailedError":
            step = event.step_key or ""
            failed = [
                describe_check(e)
                for e in result.get_asset_check_evaluations()
                if not e.passed and e.blocking and e.asset_key.to_user_string() == step
            ]
            lines += failed or [f"{what}: {user_error(error)}"]
            lines.append(
                f"  A blocking check says the data of {what} is wrong or missing, so nothing "
                "downstream of it was built: fix the cause and run again (--refetch ingests "
                "a partition again after a source file was fixed)."
            )
        else:
            lines.append(f"{what}: {user_error(error)}")
        if debug and error is not None:
            lines.append(error.to_string())
    if not lines:
        lines.append(f"{what}: run {result.run_id} failed; run with --debug for Dagster's log")
    return "\n".join(lines)


@contextmanager
def printed_progress() -> Iterator[None]:
    """The assets' progress lines (:data:`assets.common.PROGRESS`) printed as they come."""

    class Print(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            print(f"  {record.getMessage()}", flush=True)

    handler = Print(logging.INFO)
    level = PROGRESS.level
    PROGRESS.addHandler(handler)
    PROGRESS.setLevel(logging.INFO)
    try:
        yield
    finally:
        PROGRESS.removeHandler(handler)
        PROGRESS.setLevel(level)


def push_metrics(instance: dg.DagsterInstance, run_id: str) -> None:
    """The run's metrics to the Pushgateway in ``QUANTDAG_PUSHGATEWAY_URL``, if set (the daemon's
    pipeline_metrics sensors do the same for the runs it launches). A gateway that cannot be
    reached is said, and the run goes on: its figures are in its assets' metadata."""
    url = os.environ.get("QUANTDAG_PUSHGATEWAY_URL")
    if not url:
        return
    from pipelines.ops.pipeline_metrics import PushError, push_run_metrics
    from resources.pipeline_metrics import pipeline_run

    try:
        push_run_metrics(pipeline_run(instance, run_id), url)
    except PushError as exc:
        print(f"  metrics of run {run_id} NOT pushed to the Pushgateway: {exc}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--partition",
        action="append",
        metavar="KEY",
        help="only these partitions (the period's first day, e.g. 2019-02-01); repeatable",
    )
    parser.add_argument(
        "--refetch",
        action="store_true",
        help="fetch the partitions' bars from the source again (after fixing a source file)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="print Dagster's log and tracebacks of failures"
    )
    args = parser.parse_args(argv)
    # MLflow's progress bars and store-migration notices would bury the summary.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        project = load_project()
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        with printed_progress():
            return run(project, args)
    except RunFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    except USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def run(project: Project, args: argparse.Namespace) -> int:
    """Materialize the graph: every partition's bars, then every partition's features and
    labels, then training and the backtest; print the summary. Raises :class:`RunFailed`."""
    from quantdag.definitions import build_definitions  # its import loads the default project

    began = time.monotonic()
    universe = project.universe
    print(
        f"QuantDAG ({project.environment}): planning the partitions of {universe.name} "
        f"({len(universe.symbols)} symbols, history from {universe.history_start}"
        + (f" to {universe.history_end}" if universe.history_end else "")
        + ")",
        flush=True,
    )
    planned = partition_keys(project)
    keys = args.partition or planned
    refused = [k for k in keys if k not in planned]
    if refused:
        print(
            f"refused: {', '.join(refused)} "
            + ("is not a partition" if len(refused) == 1 else "are not partitions")
            + f" the source holds data of within the universe's history; planned: "
            f"{', '.join(planned) or 'none'}",
            file=sys.stderr,
        )
        return 2
    if not keys:
        print("nothing to materialize: the source holds no bar in the universe's history")
        return 1
    defs = build_definitions(project)
    instance = dg.DagsterInstance.get()
    level = "INFO" if args.debug else "CRITICAL"
    quiet: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": level}}}}
    print(
        f"Materializing {len(keys)} partitions: {', '.join(keys)}. Bars of every partition "
        "first (labels near a period's end read the next period's bars), then features and "
        "labels, then training and the backtest.",
        flush=True,
    )

    def execute(job: str, what: str, **kw: Any) -> dg.ExecuteInProcessResult:
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, raise_on_error=False, **kw
        )
        push_metrics(instance, result.run_id)
        if not result.success:
            raise RunFailed(failure(result, what, args.debug))
        for e in result.get_asset_check_evaluations():
            if not e.passed:
                print(f"  {describe_check(e)}", flush=True)
        return result

    source_bars = f"bars_{universe.base_timeframe.label}"
    refetch = {"ops": {source_bars: {"config": {"refetch": True}}}} if args.refetch else {}
    for key in keys:
        execute(
            "market_data_job", f"bars of {key}", partition_key=key, run_config={**quiet, **refetch}
        )
    for key in keys:
        execute(
            "research_job", f"features and labels of {key}", partition_key=key, run_config=quiet
        )
    print("Training (quick mode)...", flush=True)
    training = execute(
        "training_job",
        "training",
        run_config={**quiet, "ops": {"walk_forward_models": {"config": {"mode": "quick"}}}},
    )
    oos = training.asset_materializations_for_node("walk_forward_models")
    by_key = {m.asset_key.to_user_string(): m.metadata for m in oos}
    decision, quality = by_key["champion_model"], by_key["oos_predictions"]
    holdout = training.asset_materializations_for_node("holdout_predictions")[0].metadata
    print("Backtest...", flush=True)
    backtest = execute("backtest_job", "backtest", run_config=quiet)
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
    print(f"Done in {time.monotonic() - began:.0f} s.")
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


CONSTANT_FORECAST = 1e-6
"""Forecasts spread less than this (probability units) are one number in effect."""


def _holdout_segment(holdout: Mapping[str, Any], key: str, what: str) -> str:
    rows = _v(holdout, f"{key}.rows")
    if not rows:
        return f"{what}: no rows"
    spread = _v(holdout, f"{key}.forecast_spread")
    if spread is not None and spread < CONSTANT_FORECAST:
        return (
            f"{what}: {int(rows)} bars, the model's forecasts are constant (spread "
            f"{spread:.1e}): no ranking and no skill to test"
        )
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
        f"{_fmt(_v(report, 'trades_closed'), '.0f')} closed trades; beta "
        f"{_fmt(_v(report, 'beta'), '.2f')} and alpha {_fmt(_v(report, 'alpha'), '+.2%')} a "
        "year against the benchmark."
    )
    refused = _v(report, "refused_by_rule") or {}
    states = _v(report, "trading_states") or {}
    lines.append(
        "  risk (default configuration): orders refused by rule: "
        + (", ".join(f"{rule} {n}" for rule, n in refused.items()) or "none")
        + "; trading states seen: "
        + ", ".join(f"{s} {x:.1%} of bars" for s, x in states.items())
        + f"; turnover {_fmt(_v(report, 'turnover_annual'), '.1f')}x equity a year."
    )
    held = sorted({k.split("_")[1] for k in report if k.startswith("holdout_")})
    for segment in held:
        lines.append(
            f"  on the holdout ({segment}): total return "
            f"{_fmt(_v(report, f'holdout_{segment}_total_return'), '+.2%')}, "
            f"{_fmt(_v(report, f'holdout_{segment}_trades_closed'), '.0f')} closed trades."
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
