"""QuantDAG: the Dagster code location and the command-line entry points."""
