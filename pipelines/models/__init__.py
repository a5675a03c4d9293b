"""Model training: time-series splitters (more of issue 4 to come)."""
