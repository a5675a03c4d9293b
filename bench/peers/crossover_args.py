"""The crossover peers' command line: BARS.parquet FAST SLOW SHARES SLIPPAGE_BPS."""

import sys


def crossover_args():
    """(path, fast, slow, shares, slippage_bps) from ``sys.argv``."""
    if len(sys.argv) != 6:
        raise SystemExit(f"usage: {sys.argv[0]} BARS.parquet FAST SLOW SHARES SLIPPAGE_BPS")
    path, fast, slow, shares, slip = sys.argv[1:]
    return path, int(fast), int(slow), int(shares), float(slip)
