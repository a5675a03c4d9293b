"""Orders shared by the backtest and the live path, with deterministic client order ids."""
