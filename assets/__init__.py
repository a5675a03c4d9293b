"""Thin Dagster assets over the pure core in ``pipelines/``."""
