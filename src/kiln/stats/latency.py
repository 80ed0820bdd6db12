"""Optional latency distributions (``--metrics-config summary_latencies=true`` / ``histogram_latencies=true``).

Summaries keep the samples of the last ``max_age`` seconds (bounded in count) and give quantiles at scrape time,
as Triton's summaries do; histograms count samples into fixed microsecond buckets for ``histogram_quantile``.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field

from kiln.errors import InvalidArgumentError

# Triton's default summary quantiles (quantile:allowed error); only the quantiles matter here
DEFAULT_QUANTILES = (0.5, 0.9, 0.95, 0.99)
HISTOGRAM_BUCKETS_US: tuple[float, ...] = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
                                           250_000, 500_000, 1_000_000, 2_500_000, 5_000_000)  # fmt: skip
LATENCY_KINDS = ("request", "queue", "compute_input", "compute_infer", "compute_output")
# Triton's nv_inference_first_response_histogram_ms: decoupled models only, milliseconds, these default buckets
FIRST_RESPONSE_BUCKETS_MS = (100.0, 500.0, 2000.0, 5000.0)


@dataclass(frozen=True)
class LatencyOptions:
    summaries: bool = False
    histograms: bool = False
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    max_age_s: float = 60.0
    max_samples: int = 10_000

    @property
    def enabled(self) -> bool:
        return self.summaries or self.histograms

    @classmethod
    def parse(cls, settings: list[str]) -> LatencyOptions:
        """Triton-style ``--metrics-config KEY=VALUE`` settings."""
        values: dict[str, object] = {}
        for setting in settings:
            key, sep, value = setting.partition("=")
            if not sep:
                raise InvalidArgumentError(f"--metrics-config needs KEY=VALUE, got '{setting}'")
            if key == "summary_latencies":
                values["summaries"] = _bool(key, value)
            elif key == "histogram_latencies":
                values["histograms"] = _bool(key, value)
            elif key == "summary_quantiles":
                try:
                    values["quantiles"] = tuple(float(q.split(":")[0]) for q in value.split(","))
                except ValueError:
                    raise InvalidArgumentError(f"summary_quantiles: cannot parse '{value}'") from None
            elif key == "summary_max_age":
                values["max_age_s"] = float(value)
            else:
                raise InvalidArgumentError(f"--metrics-config: unknown setting '{key}'")
        return cls(**values)  # type: ignore[arg-type]


def _bool(key: str, value: str) -> bool:
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise InvalidArgumentError(f"--metrics-config {key} must be true or false, got '{value}'")


@dataclass
class LatencyWindow:
    """Recent samples (microseconds) of one latency, for quantiles; plus cumulative histogram buckets."""

    options: LatencyOptions
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    histogram: Histogram = field(default_factory=lambda: Histogram(HISTOGRAM_BUCKETS_US))
    count: int = 0
    total_us: float = 0.0

    def add(self, us: float) -> None:
        self.count += 1
        self.total_us += us
        if self.options.histograms:
            self.histogram.observe(us)
        if self.options.summaries:
            self.samples.append((time.monotonic(), us))
            if len(self.samples) > self.options.max_samples:
                self.samples.popleft()

    def quantiles(self) -> dict[float, float]:
        cutoff = time.monotonic() - self.options.max_age_s
        while self.samples and self.samples[0][0] < cutoff:
            self.samples.popleft()
        values = sorted(v for _, v in self.samples)
        if not values:
            return {q: float("nan") for q in self.options.quantiles}
        return {q: values[min(len(values) - 1, int(q * len(values)))] for q in self.options.quantiles}

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        return self.histogram.cumulative_buckets()


@dataclass
class Histogram:
    """Cumulative Prometheus-style buckets over fixed bounds (the first-response time of decoupled models)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    count: int = 0
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.counts[bisect.bisect_left(self.bounds, value)] += 1

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip([*map(_bound, self.bounds), "+Inf"], self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def _bound(value: float) -> str:
    """Prometheus' spelling of a bucket bound: ``100`` for whole numbers (as Triton's exposition), else the float."""
    return str(int(value)) if value == int(value) else repr(value)
