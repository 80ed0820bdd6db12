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
HISTOGRAM_BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
                        1_000_000, 2_500_000, 5_000_000)  # fmt: skip
LATENCY_KINDS = ("request", "queue", "compute_input", "compute_infer", "compute_output")


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
    buckets: list[int] = field(default_factory=lambda: [0] * (len(HISTOGRAM_BUCKETS_US) + 1))
    count: int = 0
    total_us: float = 0.0

    def add(self, us: float) -> None:
        self.count += 1
        self.total_us += us
        if self.options.histograms:
            self.buckets[bisect.bisect_left(HISTOGRAM_BUCKETS_US, us)] += 1
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
        out, running = [], 0
        for bound, n in zip([*map(str, HISTOGRAM_BUCKETS_US), "+Inf"], self.buckets, strict=True):
            running += n
            out.append((bound, running))
        return out
