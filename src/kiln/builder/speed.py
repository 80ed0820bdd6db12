"""Speed of a candidate at batch sizes 1, 2, 4 ... max_batch_size: used by ``--precision best`` and to pick
``dynamic_batching`` preferred batch sizes for config.pbtxt."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kiln.builder.profiles import ResolvedProfile
from kiln.builder.report import Reporter
from kiln.perf.measure import LatencyStats, make_feeds, time_runs
from kiln.perf.runners import Runner

DURATION_S = 0.3
PREFERRED_FRACTION = 0.9  # batch sizes reaching 90 % of the best throughput are "preferred"


@dataclass
class BatchSpeed:
    batch: int
    median_ms: float
    p99_ms: float
    throughput: float


@dataclass
class SpeedReport:
    batches: list[BatchSpeed]
    preferred_batch_sizes: list[int]
    queue_delay_us: int

    @property
    def best_throughput(self) -> float:
        return max(b.throughput for b in self.batches)

    def summary(self) -> dict[str, object]:
        return {
            **{f"b{b.batch}": f"{b.throughput:.1f}/s" for b in self.batches},
            "preferred": self.preferred_batch_sizes,
        }

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def batch_sizes(max_batch_size: int) -> list[int]:
    if max_batch_size <= 0:
        return [1]
    sizes = [b for b in (1, 2, 4, 8, 16, 32, 64) if b < max_batch_size]
    return [*sizes, max_batch_size]


def measure_batches(runner: Runner, profile: ResolvedProfile, reporter: Reporter) -> SpeedReport:
    sizes = batch_sizes(profile.max_batch_size)
    speeds = []
    for batch in reporter.track(iter(sizes), len(sizes), "timing batch sizes"):
        feeds = make_feeds(runner, batch, profile.opt_shapes)
        runs, wall = time_runs(runner, feeds, None, DURATION_S, 0.1)
        stats = LatencyStats.from_latencies(runs, batch, wall)
        speeds.append(BatchSpeed(batch, stats.median_ms, stats.p99_ms, stats.throughput))
    best = max(s.throughput for s in speeds)
    preferred = [s.batch for s in speeds if s.throughput >= PREFERRED_FRACTION * best and s.batch > 1][:3]
    # Wait at most about half a batch-1 run for more requests: cheap next to the gain of a fuller batch.
    delay = int(min(5000, max(100, speeds[0].median_ms * 500)))
    return SpeedReport(speeds, preferred if profile.max_batch_size > 0 else [], delay)
