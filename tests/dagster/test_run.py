"""`make run` (``quantdag.run.main``) and the source-bars asset on tiny file sources: errors are
reported at their cause in a line or two, a month without bars fails its blocking check, only
partitions the source holds are planned, and the nightly stops at ``history_end``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import yaml

from assets.bars import build_bar_assets
from pipelines.bars.checks import expected_sessions
from quantdag.project import PROJECT_ROOT, Project, load_project
from quantdag.run import describe_check, main, partition_keys
from resources import FileBarSourceResource, TradingDatabaseResource

NY = ZoneInfo("America/New_York")
SESSIONS = (date(2019, 2, 4), date(2019, 2, 5))


def _rows(day: date, close: str | None = None) -> list[str]:
    """A whole regular session of 15-minute bars, stamped with their END (09:45 .. 16:00)."""
    out = []
    t = datetime(day.year, day.month, day.day, 9, 45)
    while t.time() <= datetime(2000, 1, 1, 16).time():
        c = close or "100.5"
        out.append(f"{t:%Y-%m-%d %H:%M:%S},100.0,101.0,99.0,{c},1000")
        t += timedelta(minutes=15)
    return out


def _tiny_project(
    tmp_path: Path, *, close: str | None = None, universe: dict[str, object] | None = None
) -> Path:
    """A settings file over a one-symbol source of two February sessions, every store in
    ``tmp_path``; ``close`` replaces every close price (e.g. with text that does not parse)."""
    source = tmp_path / "source"
    source.mkdir()
    rows = [r for day in SESSIONS for r in _rows(day, close)]
    (source / "AAA_15min.csv").write_text(
        "\n".join(["timestamp,open,high,low,close,volume", *rows]) + "\n"
    )
    (tmp_path / "universe.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "calendar": "XNYS",
                "timeframe": "15m",
                "session": "regular",
                "history_start": "2019-02-01",
                "history_end": "2019-03-29",
                "aggregate_to": ["60m"],
                "symbols": [{"symbol": "AAA", "sector": "Test"}],
                **(universe or {}),
            }
        )
    )
    settings = yaml.safe_load((PROJECT_ROOT / "config" / "settings.yaml").read_text())
    settings["universe"] = str(tmp_path / "universe.yaml")
    settings["data_dir"] = str(tmp_path / "store")
    settings["research"]["holdout"] = {"start": None, "symbols": []}
    local = settings["environments"]["local"]
    local["source"]["path"] = str(source)
    local["database_url"] = f"sqlite:///{tmp_path / 'trading.db'}"
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
def run_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A clean environment for ``main()``: a temporary Dagster home, no overriding URLs."""
    for var in ("QUANTDAG_DATABASE_URL", "QUANTDAG_MLFLOW_URI", "QUANTDAG_OPTUNA_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QUANTDAG_ENV", "local")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "deploy" / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    yield tmp_path


def test_all_quarantined_partition_is_reported_at_its_cause(
    run_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUANTDAG_SETTINGS", str(_tiny_project(run_env, close="n/a")))
    code = main([])
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, err
    message = lines[0]
    assert "PartitionError" in message and "bars_15m 2019-02-01" in message
    assert "all 52 rows that came in were quarantined, none stored" in message
    assert "unparseable_value 52, e.g. AAA_15min.csv, row index 0" in message
    assert "refetch" in message  # what to do
    # The progress line of the ingestion came before, with the counts.
    assert "bars_15m 2019-02-01: 52 rows fetched, 0 stored, 52 quarantined" in out

    # Run again: nothing new is fetched, and the month, still without a bar, fails its
    # blocking check, said in two lines with what to do.
    code = main([])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2, err
    assert lines[0] == (
        "check bars_15m:sessions_have_bars FAILED on 2019-02-01: 19 sessions "
        "(2019-02-01 .. 2019-02-28), 0 bars stored; sessions without any bar: 19"
    )
    assert "--refetch" in lines[1]


def test_a_bad_config_is_reported_in_one_block_with_its_file_and_key(
    run_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _tiny_project(run_env, universe={"calendar": "NYSEX"})
    monkeypatch.setenv("QUANTDAG_SETTINGS", str(settings))
    code = main([])
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in out + err and out == ""
    assert err.startswith("Configuration error: ")
    assert str(run_env / "universe.yaml") in err and "calendar" in err and "NYSEX" in err


def test_only_partitions_the_source_holds_are_planned_and_others_refused(
    run_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _tiny_project(run_env)
    # A file of a symbol outside the universe, in March: it must not widen the plan.
    (run_env / "source" / "ZZZ_15min.csv").write_text(
        "\n".join(["timestamp,open,high,low,close,volume", *_rows(date(2019, 3, 5))]) + "\n"
    )
    monkeypatch.setenv("QUANTDAG_SETTINGS", str(settings))
    project = load_project()
    assert partition_keys(project) == ["2019-02-01"]  # March is a partition, without data
    for key in ("2019-03-01", "2019-05-01"):  # inside the history but empty; after its end
        code = main(["--partition", key])
        out, err = capsys.readouterr()
        assert code == 2 and "Traceback" not in out + err
        assert err.strip() == (
            f"refused: {key} is not a partition the source holds data of within the "
            "universe's history; planned: 2019-02-01"
        )


def _tiny_assets(settings: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    project: Project = load_project({"QUANTDAG_SETTINGS": str(settings)})
    assets = build_bar_assets(project.universe, project.settings.validation)
    source = project.env.source
    resources = {
        "market_data": FileBarSourceResource.from_config(source),  # type: ignore[arg-type]
        "trading_db": TradingDatabaseResource(url=f"sqlite:///{tmp_path / 'trading.db'}"),
    }
    return project, assets, resources


def test_a_month_without_bars_fails_its_blocking_check(tmp_path: Path) -> None:
    """February holds two sessions of bars (it passes, and says which sessions are missing);
    March holds none: it is not "materialized with 0 bars", its blocking check fails."""
    _, assets, resources = _tiny_assets(_tiny_project(tmp_path), tmp_path)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        feb = dg.materialize(
            assets, partition_key="2019-02-01", resources=resources, instance=instance
        )
        assert feb.success
        verdicts = {e.check_name: e for e in feb.get_asset_check_evaluations()}
        assert verdicts["sessions_have_bars"].passed
        whole = verdicts["whole_sessions_present"]
        assert not whole.passed and not whole.blocking  # 17 of 19 sessions missing: a warning
        assert whole.metadata["missing_sessions"].value == 17
        assert describe_check(whole) == (
            "check bars_15m:whole_sessions_present warns on 2019-02-01: 19 sessions; missing: "
            "AAA: 2019-02-01, 2019-02-06, 2019-02-07, 2019-02-08, 2019-02-11 and 12 more"
        )

        mar = dg.materialize(
            assets,
            partition_key="2019-03-01",
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        assert not mar.success
        failed = [e for e in mar.get_asset_check_evaluations() if not e.passed and e.blocking]
        assert [(e.check_name, e.partition) for e in failed] == [
            ("sessions_have_bars", "2019-03-01")
        ]
        meta = failed[0].metadata
        assert meta["sessions"].value == 21 and meta["bars_stored"].value == 0
        assert "21 sessions (2019-03-01 .. 2019-03-29), 0 bars stored" in describe_check(failed[0])

        # Every declared check of the asset has a verdict recorded for the partition it ran on
        # (none left "planned", which the UI shows as skipped).
        bars = assets[0]
        for spec in bars.check_specs:
            for run, key in ((feb, "2019-02-01"), (mar, "2019-03-01")):
                records = instance.event_log_storage.get_asset_check_execution_history(
                    spec.key, limit=10
                )
                mine = [r for r in records if r.run_id == run.run_id]
                assert [r.partition for r in mine] == [key], spec.key
                assert mine[0].status.value in ("SUCCEEDED", "FAILED"), spec.key


def test_expected_sessions_respect_as_of_and_the_history() -> None:
    utc = ZoneInfo("UTC")
    feb = (datetime(2019, 2, 1, 5, tzinfo=utc), datetime(2019, 3, 1, 5, tzinfo=utc))
    whole = expected_sessions(
        "XNYS", "regular", feb, history_start=date(2019, 1, 1), history_end=None
    )
    assert len(whole) == 19 and date(2019, 2, 18) not in whole  # Presidents' Day
    # Up to 2019-02-12 18:30 New York: the session of the 12th has closed, the 13th not begun.
    as_of = datetime(2019, 2, 12, 18, 30, tzinfo=NY)
    upto = expected_sessions(
        "XNYS", "regular", (feb[0], as_of), history_start=date(2019, 1, 1), history_end=None
    )
    assert upto == whole[:8] and upto[-1] == date(2019, 2, 12)
    # Mid-session: that session is not expected yet.
    noon = datetime(2019, 2, 12, 12, 0, tzinfo=NY)
    assert (
        expected_sessions(
            "XNYS", "regular", (feb[0], noon), history_start=date(2019, 1, 1), history_end=None
        )
        == whole[:7]
    )
    clipped = expected_sessions(
        "XNYS",
        "regular",
        feb,
        history_start=date(2019, 2, 4),
        history_end=date(2019, 2, 15),
    )
    assert clipped == [d for d in whole if date(2019, 2, 4) <= d <= date(2019, 2, 15)]


def test_the_nightly_stops_at_history_end(tmp_path: Path) -> None:
    from quantdag.definitions import build_definitions

    project = load_project({})
    assert project.universe.history_end == date(2019, 2, 15)
    defs = build_definitions(project)
    schedule = defs.resolve_schedule_def("nightly_retraining_schedule")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:

        def tick(day: date) -> dg.ScheduleExecutionData:
            when = datetime(day.year, day.month, day.day, 18, 30, tzinfo=NY)
            context = dg.build_schedule_context(
                instance=instance,
                scheduled_execution_time=when,
                repository_def=defs.get_repository_def(),
            )
            return schedule.evaluate_tick(context)

        after = tick(date(2019, 2, 19))  # a session, after the data set's end
        assert not after.run_requests
        assert "after the universe's history_end (2019-02-15)" in (after.skip_message or "")
        [request] = tick(date(2019, 2, 15)).run_requests or []  # its last session
        assert request.partition_key == "2019-02-01"


def test_a_holdout_of_constant_forecasts_shows_no_z() -> None:
    """A model without usable trees forecasts one number; its z against the base rate measures
    float noise, so make run names the case instead of printing the z."""
    from quantdag.run import _holdout_segment

    figures = {
        "rows": 566.0,
        "auc": 0.5,
        "auc_se": 0.0,
        "log_loss_skill": 2e-7,
        "log_loss_skill_z": 11.14,
    }
    constant = {f"time.{k}": dg.MetadataValue.float(v) for k, v in figures.items()}
    constant["time.forecast_spread"] = dg.MetadataValue.float(3e-9)
    line = _holdout_segment(constant, "time", "out of time")
    assert "forecasts are constant" in line and "z" not in line.split("constant")[1]
    varied = {**constant, "time.forecast_spread": dg.MetadataValue.float(0.2)}
    assert "(z +11.14)" in _holdout_segment(varied, "time", "out of time")


def test_a_month_missing_between_a_symbols_bars_fails_when_backfilled_in_order(
    tmp_path: Path,
) -> None:
    """AAA has bars in January and March and none in February; BBB trades all three months.
    Run oldest first, as a backfill does, February's blocking check fails: the files, not the
    store (which has no March yet), say that AAA's history spans it."""
    settings = _tiny_project(
        tmp_path,
        universe={
            "history_start": "2019-01-02",
            "symbols": [{"symbol": "AAA"}, {"symbol": "BBB"}],
        },
    )
    source = tmp_path / "source"
    header = "timestamp,open,high,low,close,volume"
    days = {
        "AAA": [date(2019, 1, 3), date(2019, 3, 4)],
        "BBB": [date(2019, 1, 3), *SESSIONS, date(2019, 3, 4)],
    }
    for symbol, sessions in days.items():
        rows = [r for day in sessions for r in _rows(day)]
        (source / f"{symbol}_15min.csv").write_text("\n".join([header, *rows]) + "\n")
    _, assets, resources = _tiny_assets(settings, tmp_path)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        jan = dg.materialize(
            assets, partition_key="2019-01-01", resources=resources, instance=instance
        )
        assert jan.success
        feb = dg.materialize(
            assets,
            partition_key="2019-02-01",
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        verdict = next(
            e for e in feb.get_asset_check_evaluations() if e.check_name == "sessions_have_bars"
        )
        assert not verdict.passed and verdict.blocking
        assert verdict.metadata["symbols_without_bars"].value == ["AAA"]
