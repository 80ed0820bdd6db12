"""The trtexec-like local benchmark behind ``kiln bench``."""

from kiln.perf.bench import BenchOptions, BenchResult, bench
from kiln.perf.measure import LatencyStats

__all__ = ["BenchOptions", "BenchResult", "LatencyStats", "bench"]
