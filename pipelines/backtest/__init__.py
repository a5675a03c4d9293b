"""Backtesting: the event engine and its simulated broker, the vectorized path, the model
strategy, statistics (PSR, DSR, PBO), trials and the HTML report."""
