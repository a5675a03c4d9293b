"""Benchmarks (`make bench`): figures written to bench/results/latest.json."""
