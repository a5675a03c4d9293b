"""Orders shared by the backtest and the live path (issue 5 and later)."""
