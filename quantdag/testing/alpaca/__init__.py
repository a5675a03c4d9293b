"""A local Alpaca for tests and demos: broker + market data, REST + websockets, on 127.0.0.1."""

from quantdag.testing.alpaca.faults import Fault
from quantdag.testing.alpaca.replay import sample_minute_bars
from quantdag.testing.alpaca.server import LocalAlpaca

__all__ = ["Fault", "LocalAlpaca", "sample_minute_bars"]
