"""Sensors: the nightly's chain after its data run (``nightly``). The market-hours sensor that
starts live trading comes with the live issue."""
