"""Operations: alerts to people (metrics of the live session are in pipelines.live.metrics)."""
