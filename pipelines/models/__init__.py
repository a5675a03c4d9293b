"""Models: purged time-series splits, estimators, walk-forward training and calibration,
nested tuning, the holdout, cluster-robust evaluation, the skill gate, the registry and
inference."""
