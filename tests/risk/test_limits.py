"""Trading states from limits: the drawdown ladder, the daily loss latched to its session, stale
data and the kill switch, one event per transition and none (the same object) when nothing
changes."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest

from pipelines.risk.events import RiskEvent, TradingState
from pipelines.risk.limits import LimitsConfig, RiskStatus, update_status

pytestmark = pytest.mark.unit

T0 = datetime(2021, 3, 3, 15, 0, tzinfo=UTC)
DAY1, DAY2 = date(2021, 3, 3), date(2021, 3, 4)
ACTIVE, REDUCING, HALTED = TradingState.ACTIVE, TradingState.REDUCING, TradingState.HALTED


class Feed:
    """Calls ``update_status`` bar after bar, keeping the status, the events and the trips."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self.status = RiskStatus()
        self.events: list[RiskEvent] = []
        self.now = T0

    def bar(
        self,
        equity: float,
        *,
        session: date = DAY1,
        age: float | None = 0.0,
        kill_switch: bool = False,
        flat: bool = False,
    ) -> tuple[TradingState, list[RiskEvent], bool]:
        self.now += timedelta(minutes=15)
        self.status, events, trip = update_status(
            self.status,
            self.limits,
            now=self.now,
            session=session,
            equity=equity,
            data_age_s=age,
            kill_switch=kill_switch,
            flat=flat,
        )
        self.events += events
        return self.status.state, events, trip


def test_drawdown_ladder_reduces_recovers_and_halts_with_a_trip() -> None:
    feed = Feed(LimitsConfig(daily_loss=None, reduce_drawdown=0.05, halt_drawdown=0.10))
    assert feed.bar(100_000.0) == (ACTIVE, [], False)  # the first bar is no transition
    assert feed.bar(110_000.0)[0] is ACTIVE  # a new peak
    state, events, trip = feed.bar(104_600.0)  # 4.9% from 110,000
    assert (state, events, trip) == (ACTIVE, [], False)
    state, events, trip = feed.bar(104_400.0)  # 5.09%
    assert state is REDUCING and not trip
    (e,) = events
    assert (e.kind, e.rule, e.state_from, e.state_to) == (
        "state",
        "drawdown_reduce",
        ACTIVE,
        REDUCING,
    )
    assert e.values["drawdown"] == pytest.approx(1 - 104_400 / 110_000)
    assert e.values["peak_equity"] == 110_000.0 and e.values["limit"] == 0.05
    assert "drawdown 5.09% from the peak 110,000.00 USD" in e.detail
    state, events, _ = feed.bar(105_000.0)  # 4.5%: recovered
    assert state is ACTIVE and [(x.rule, x.state_from) for x in events] == [("clear", REDUCING)]
    feed.bar(100_000.0)  # REDUCING again
    state, events, trip = feed.bar(98_900.0)  # 10.09%: halt and trip
    assert state is HALTED and trip
    assert [(x.rule, x.state_from, x.state_to) for x in events] == [
        ("drawdown_halt", REDUCING, HALTED)
    ]
    # The caller tripped the switch: the next bar sees it, with no second event.
    state, events, trip = feed.bar(99_000.0, kill_switch=True)
    assert (state, events, trip) == (HALTED, [], False)
    assert feed.status.reason == "kill_switch"
    # Recovering does not clear a tripped switch.
    assert feed.bar(120_000.0, kill_switch=True)[:2] == (HALTED, [])


def test_an_unpersisted_trip_is_asked_again() -> None:
    feed = Feed(LimitsConfig(daily_loss=None))
    feed.bar(100_000.0)
    assert feed.bar(89_000.0)[2] is True
    state, events, trip = feed.bar(89_500.0)  # the caller did not trip the switch
    assert (state, events, trip) == (HALTED, [], True)


def test_a_reset_switch_rebases_the_drawdown() -> None:
    feed = Feed(LimitsConfig(daily_loss=None))
    feed.bar(100_000.0)
    feed.bar(89_000.0)
    feed.bar(89_000.0, kill_switch=True)
    state, events, trip = feed.bar(88_000.0)  # a person reset the switch
    assert state is ACTIVE and not trip
    (e,) = events
    assert (e.rule, e.state_from, e.state_to) == ("clear", HALTED, ACTIVE)
    assert "reset" in e.detail and feed.status.peak_equity == 88_000.0
    assert feed.bar(83_500.0)[0] is REDUCING  # 5.1% from the reset's equity


def test_daily_loss_is_latched_for_the_session_and_cleared_the_next() -> None:
    feed = Feed(LimitsConfig(daily_loss=0.03, reduce_drawdown=None, halt_drawdown=None))
    feed.bar(100_000.0)
    assert feed.bar(97_100.0)[0] is ACTIVE  # 2.9%
    state, events, trip = feed.bar(96_900.0)  # 3.1%
    assert state is HALTED and not trip
    (e,) = events
    assert (e.rule, e.state_from) == ("daily_loss", ACTIVE)
    assert e.values["session_loss"] == pytest.approx(0.031)
    assert e.values["limit"] == 0.03 and "session loss 3.10%" in e.detail
    assert feed.bar(101_000.0) == (HALTED, [], False)  # latched while the session lasts
    state, events, _ = feed.bar(101_000.0, session=DAY2)
    assert state is ACTIVE and [(x.rule, x.state_from) for x in events] == [("clear", HALTED)]
    assert feed.status.session_equity == 101_000.0 and feed.status.session == DAY2
    # The new session's loss is measured from its own first equity.
    assert feed.bar(98_500.0, session=DAY2)[0] is ACTIVE  # 2.5% from 101,000
    assert feed.bar(97_900.0, session=DAY2)[0] is HALTED  # 3.07%


def test_stale_data_reduces_while_it_lasts() -> None:
    feed = Feed(LimitsConfig(max_data_age_s=120.0))
    feed.bar(100_000.0, age=60.0)
    state, events, _ = feed.bar(100_000.0, age=180.0)
    assert state is REDUCING
    (e,) = events
    assert e.rule == "data_stale" and e.values["data_age_s"] == 180.0 and e.values["limit"] == 120
    assert feed.bar(100_000.0, age=None)[0] is ACTIVE  # unknown age is not checked
    assert feed.bar(100_000.0, age=120.0)[0] is ACTIVE  # at the limit, not beyond
    assert Feed(LimitsConfig()).bar(100_000.0, age=1e9)[0] is ACTIVE  # off by default


def test_the_kill_switch_halts_and_is_the_most_severe() -> None:
    feed = Feed(LimitsConfig(daily_loss=None, max_data_age_s=60.0))
    feed.bar(100_000.0)
    feed.bar(94_000.0, age=600.0)  # REDUCING: drawdown (more severe rule than staleness)
    assert feed.status.reason == "drawdown_reduce"
    state, events, trip = feed.bar(94_000.0, age=600.0, kill_switch=True)
    assert (state, trip) == (HALTED, False)
    assert [(e.rule, e.state_from, e.state_to) for e in events] == [
        ("kill_switch", REDUCING, HALTED)
    ]


def test_limits_that_are_off_never_bind() -> None:
    feed = Feed(LimitsConfig(daily_loss=None, reduce_drawdown=None, halt_drawdown=None))
    feed.bar(100_000.0)
    assert feed.bar(10_000.0) == (ACTIVE, [], False)


def test_nothing_changes_returns_the_same_status() -> None:
    limits = LimitsConfig()
    status, _, _ = update_status(
        RiskStatus(), limits, now=T0, session=DAY1, equity=1e6, data_age_s=0.0, kill_switch=False
    )
    again, events, trip = update_status(
        status, limits, now=T0, session=DAY1, equity=1e6, data_age_s=5.0, kill_switch=False
    )
    assert again is status and events == [] and trip is False
    higher, events, _ = update_status(
        status, limits, now=T0, session=DAY1, equity=1.01e6, data_age_s=0.0, kill_switch=False
    )
    assert higher is not status and higher.peak_equity == 1.01e6 and events == []
    assert higher.since == status.since  # a new peak is not a change of state


def test_status_round_trips_through_json() -> None:
    feed = Feed(LimitsConfig())
    feed.bar(100_000.0)
    feed.bar(96_000.0)
    assert feed.status.halted_session == DAY1
    text = json.dumps(feed.status.to_dict())
    assert RiskStatus.from_dict(json.loads(text)) == feed.status
    assert RiskStatus.from_dict(json.loads(json.dumps(RiskStatus().to_dict()))) == RiskStatus()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"daily_loss": 1.5}, "daily_loss"),
        ({"reduce_drawdown": 0.1, "halt_drawdown": 0.05}, "below halt_drawdown"),
        ({"max_data_age_s": 0}, "max_data_age_s"),
    ],
)
def test_invalid_limits_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LimitsConfig(**kwargs)


def test_an_equity_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        Feed(LimitsConfig()).bar(float("nan"))


def test_the_daily_loss_counts_the_overnight_gap() -> None:
    """-2.9% overnight then -0.5% in the session is a 3.4% loss on the day: HALTED."""
    feed = Feed(LimitsConfig(daily_loss=0.03, reduce_drawdown=None, halt_drawdown=None))
    feed.bar(1_000_000.0)
    state, _, _ = feed.bar(971_000.0, session=DAY2)
    assert state is ACTIVE
    state, events, _ = feed.bar(966_000.0, session=DAY2)
    assert state is HALTED and events[-1].rule == "daily_loss"


def test_a_flat_book_in_reducing_is_rebased_at_the_next_session_but_the_halt_is_not() -> None:
    feed = Feed(LimitsConfig(daily_loss=None, reduce_drawdown=0.05, halt_drawdown=0.10))
    feed.bar(1_000_000.0)
    state, _, _ = feed.bar(940_000.0)
    assert state is REDUCING
    # Still reducing while positions are held, even at a new session.
    state, _, _ = feed.bar(940_000.0, session=DAY2)
    assert state is REDUCING
    # Flat at the start of a session: the reduce level re-bases, trading resumes.
    state, events, _ = feed.bar(940_000.0, session=date(2021, 3, 5), flat=True)
    assert state is ACTIVE
    assert "the reduce level now measures from 940,000.00" in events[-1].detail
    # The halt still measures from the all-time peak: 10% below 1,000,000 halts.
    state, _, trip = feed.bar(899_000.0, session=date(2021, 3, 5))
    assert state is HALTED and trip
