"""Statistics: per-version counters (Triton's statistics extension), latency windows, Prometheus exposition."""

from kiln.stats.counters import STAT_DURATIONS, BatchStats, Duration, ModelStats, failure_reason

__all__ = ["STAT_DURATIONS", "BatchStats", "Duration", "ModelStats", "failure_reason"]
