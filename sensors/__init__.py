"""Sensors: the nightly's chain after its data run (``nightly``) and the market-hours sensor
that starts live trading (``live``)."""

from sensors.live import LiveSensorConfig, build_live_trading_sensor
from sensors.nightly import build_nightly_sensors

__all__ = ["LiveSensorConfig", "build_live_trading_sensor", "build_nightly_sensors"]
