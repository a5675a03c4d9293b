"""Sensors. The market-hours sensor that starts live trading comes with the live issue; there
are none yet."""
