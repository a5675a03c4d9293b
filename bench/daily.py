"""Daily research benchmark on the shared S&P 500 daily set (505 symbols, 2013-2018).

The set is written out once as one vendor-style CSV per symbol (``Date,Open,High,Low,Close,
Volume``, date-only timestamps) into a temporary directory; that is the setup, outside the
timing. Then, timed end to end in one process: ingestion through the file source with a daily
universe of all 505 symbols, one yearly partition at a time (``ingest_window``: validate,
quarantine, store in a fresh SQLite trading database), the feature matrix and the
triple-barrier labels of the daily settings (``config/daily/settings.yaml``: ten sessions,
spanning sessions), the walk-forward in quick mode with the daily embargo, and the event-driven
backtest of the out-of-sample predictions with costs, annualised on 252 sessions; then the same
backtest with the bets weighed by HRP, inverse volatility and equal weight (``daily.
portfolio_methods``, net of costs, outside the end-to-end time). Prints one
JSON object of ``daily.*`` figures; its peak resident memory is this process's.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl

from pipelines.backtest.analytics import return_stats
from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.backtest.model_backtest import Market, simulate_model, sizing_with_label_exits
from pipelines.backtest.strategy import SizingConfig
from pipelines.backtest.trials import daily_returns
from pipelines.config import FileSourceConfig, UniverseConfig, load_settings
from pipelines.data.ingest import ingest_window
from pipelines.data.sources import FileBarSource
from pipelines.data.store import BarStore
from pipelines.execution.path import PathConfig
from pipelines.features import FeatureConfig, build_features, feature_registry
from pipelines.features.registry import CATEGORIES
from pipelines.labels import label_triple_barrier, sample_weights
from pipelines.labels.partition import barrier_config
from pipelines.models.evaluation import auc_score, session_clusters
from pipelines.models.training import (
    build_training_set,
    embargo_for,
    plan_for,
    train_walk_forward,
)

ROOT = Path(__file__).resolve().parent.parent
FILE = "sp500_daily_2013_2018.parquet"
NEW_YORK = ZoneInfo("America/New_York")


def write_csvs(path: Path, into: Path) -> tuple[list[str], int, date, date]:
    """One ``<SYM>.csv`` per symbol with the vendor's columns; the symbols, the rows written
    and the first and last dates."""
    frame = pl.read_parquet(path).with_columns(pl.col("symbol").cast(pl.String))
    for (symbol,), part in frame.sort("symbol", "date").group_by("symbol", maintain_order=True):
        part.select(
            Date=pl.col("date").dt.strftime("%Y-%m-%d"),
            Open="open",
            High="high",
            Low="low",
            Close="close",
            Volume="volume",
        ).write_csv(into / f"{symbol}.csv")
    symbols = sorted(frame["symbol"].unique().to_list())
    return symbols, frame.height, frame["date"].min(), frame["date"].max()  # type: ignore[return-value]


def _year(y: int) -> tuple[datetime, datetime]:
    """A yearly partition's window: New York midnights of 1 January, as UTC instants."""
    return (
        datetime(y, 1, 1, tzinfo=NEW_YORK).astimezone(UTC),
        datetime(y + 1, 1, 1, tzinfo=NEW_YORK).astimezone(UTC),
    )


def run(shared: Path) -> dict[str, object]:
    settings, _ = load_settings(ROOT / "config" / "daily" / "settings.yaml")
    labels_cfg = settings.labels
    with tempfile.TemporaryDirectory(prefix="quantdag-bench-daily-") as tmp:
        csvs = Path(tmp) / "csv"
        csvs.mkdir()
        t0 = time.perf_counter()
        symbols, rows_written, first, last = write_csvs(shared / FILE, csvs)
        write_s = time.perf_counter() - t0

        began = time.perf_counter()
        universe = UniverseConfig(
            name="sp500-daily",
            timeframe="1d",
            history_start=first,
            history_end=last,
            symbols=tuple({"symbol": s} for s in symbols),  # type: ignore[arg-type]
        )
        source_cfg = FileSourceConfig(
            path=str(csvs),
            pattern="{symbol}.csv",
            columns={  # type: ignore[arg-type]
                "timestamp": "Date",
                "open": "Open",
                "high": "High",
                "low": "Low",
                "close": "Close",
                "volume": "Volume",
            },
            label="end",
            adjustment="split",
        )
        source = FileBarSource(source_cfg, universe.base_timeframe)
        store = BarStore(f"sqlite:///{tmp}/trading.db")
        store.migrate()
        rows_in = stored = quarantined = 0
        reasons: dict[str, int] = {}
        t0 = time.perf_counter()
        for year in range(first.year, last.year + 1):
            window = _year(year)
            report = ingest_window(
                source,
                store,
                universe,
                settings.validation,
                window,
                as_of=window[1],
                batch=f"{year}-01-01",
            )
            assert report.accounted, report
            rows_in += report.rows_in
            stored += report.rows_stored
            quarantined += report.rows_quarantined
            for reason, n in report.by_reason.items():
                reasons[reason] = reasons.get(reason, 0) + n
        ingest_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        bars = store.read_bars(timeframe="1d", start=_year(first.year)[0], end=_year(last.year)[1])
        config = FeatureConfig(universe.base_timeframe, universe.session, universe.calendar)
        registry = feature_registry(config)
        matrix = build_features(bars, config, registry)
        features_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        barriers = barrier_config(labels_cfg)
        labels = sample_weights(
            label_triple_barrier(bars, barriers).labels, bars, decay=labels_cfg.decay
        )
        labels_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        data = build_training_set(matrix, labels)
        del matrix
        names = [c for c in data.columns if c.split("_", 1)[0] in CATEGORIES]
        plan = plan_for("quick")
        embargo = embargo_for(universe.base_timeframe, labels_cfg.max_holding_bars)

        result = train_walk_forward(data, replace(plan, embargo=embargo), names)
        training_s = time.perf_counter() - t0
        predictions = result.predictions
        overall = result.overall()
        pooled = auc_score(
            predictions["y"].to_numpy(),
            predictions["prob"].to_numpy(),
            session_clusters(predictions["ts"]),
        )

        t0 = time.perf_counter()
        market = Market(universe.base_timeframe.minutes, universe.calendar, universe.session, 252)
        sizing = sizing_with_label_exits(
            SizingConfig(threshold=0.02, max_holding_bars=labels_cfg.max_holding_bars), barriers
        )
        cash = Decimal(1_000_000)
        broker = BrokerConfig(
            CostModel(1.0, 1.0, 0.1, Decimal("0.005"), Decimal("1")),
            participation=0.05,
            max_leverage=1.0,
        )
        backtest = simulate_model(
            bars,
            predictions,
            sizing=sizing,
            broker=broker,
            cash=cash,
            barriers=barriers,
            market=market,
        )
        daily = daily_returns(backtest.equity, float(cash))
        stats = return_stats(daily["ret"].to_numpy(), 252)
        backtest_s = time.perf_counter() - t0
        methods: dict[str, object] = {}
        # The methods side by side with no exposure or loss limit binding (each one's own
        # drawdowns would otherwise decide when it may trade): what the weighting does.
        unlimited = PathConfig.without_limits(bar_minutes=1440)
        for method in ("bet_size", "hrp", "inverse_volatility", "equal_weight"):
            t0 = time.perf_counter()
            weighed = simulate_model(
                bars,
                predictions,
                sizing=sizing,
                broker=broker,
                cash=cash,
                barriers=barriers,
                market=market,
                path=replace(
                    unlimited,
                    portfolio=replace(unlimited.portfolio, method=method, lookback=252),  # type: ignore[arg-type]
                ),
            )
            seconds = time.perf_counter() - t0
            m = return_stats(daily_returns(weighed.equity, float(cash))["ret"].to_numpy(), 252)
            costs = sum(f.commission + f.slippage for f in weighed.ledger.fills) + sum(
                (c.amount for c in weighed.ledger.charges), Decimal(0)
            )
            methods[method] = {
                "total_return": round(m.total_return, 5),
                "sharpe_annualised": round(m.sharpe, 3),
                "fills": weighed.trades,
                "costs_usd": round(float(costs), 2),
                "seconds": round(seconds, 1),
                "refused": sum(1 for e in weighed.risk_events if e.kind == "refused"),
                "refused_by_rule": dict(
                    Counter(e.rule for e in weighed.risk_events if e.kind == "refused")
                ),
                "bars_not_active": round(
                    float((weighed.equity["state"] != "ACTIVE").mean()),
                    3,  # type: ignore[arg-type]
                ),
            }
        total_s = time.perf_counter() - began

    return {
        "daily.symbols": len(symbols),
        "daily.csv_rows_written": rows_written,
        "daily.write_csv_s": round(write_s, 2),
        "daily.rows_in": rows_in,
        "daily.rows_stored": stored,
        "daily.rows_quarantined": quarantined,
        "daily.quarantined_by_reason": dict(sorted(reasons.items())),
        "daily.ingest_s": round(ingest_s, 2),
        "daily.features": len(registry),
        "daily.features_s": round(features_s, 2),
        "daily.labels": labels.height,
        "daily.labels_s": round(labels_s, 2),
        "daily.training_rows": data.height,
        "daily.walk_forward_folds": len(result.records),
        "daily.walk_forward_quick_s": round(training_s, 2),
        "daily.embargo_days": embargo.days,
        "daily.oos_rows": predictions.height,
        "daily.oos_log_loss": round(float(overall["log_loss"]), 5),
        "daily.oos_auc_pooled": round(pooled.value, 4),
        "daily.oos_auc_pooled_se": round(pooled.se, 4),
        "daily.backtest_s": round(backtest_s, 2),
        "daily.backtest_fills": backtest.trades,
        "daily.backtest_total_return": round(stats.total_return, 5),
        "daily.backtest_sharpe_annualised": round(stats.sharpe, 3),
        "daily.portfolio_methods": methods,
        "daily.end_to_end_s": round(total_s, 1),
        "daily.peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(run(args.shared)))


if __name__ == "__main__":
    main()
