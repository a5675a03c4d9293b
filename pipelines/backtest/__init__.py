"""Backtesting and analytics (issue 5; only the statistics so far)."""
