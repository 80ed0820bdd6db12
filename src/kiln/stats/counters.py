"""Per-model-version inference statistics (Triton's statistics extension), updated on the event loop thread."""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from dataclasses import dataclass, field

from kiln.errors import ErrorCode, KilnError
from kiln.stats.latency import (
    FIRST_RESPONSE_BUCKETS_MS,
    LATENCY_KINDS,
    Histogram,
    LatencyOptions,
    LatencyWindow,
)

# Triton's failure reasons (label `reason` of nv_inference_request_failure)
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):  # the client went away
        return "CANCELED"
    if isinstance(exc, KilnError):
        if exc.code in (ErrorCode.UNAVAILABLE, ErrorCode.RESOURCE_EXHAUSTED):
            return "REJECTED"
        if exc.code is ErrorCode.CANCELLED:
            return "CANCELED"
        if exc.code is ErrorCode.INTERNAL:
            return "BACKEND"
    return "OTHER"


# the inference_stats durations, in Triton's order (cache_hit / cache_miss stay zero: no response cache yet)
STAT_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
                  "cache_miss")  # fmt: skip


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    name: str
    version: str
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    failures: Tally[str] = field(default_factory=Tally)
    batches: dict[int, BatchStats] = field(default_factory=dict)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    pending: int = 0
    latency: dict[str, LatencyWindow] = field(default_factory=dict)  # kind -> window, when enabled
    first_response: Histogram | None = None  # decoupled models with histogram_latencies=true (ms)

    @classmethod
    def create(
        cls, name: str, version: str, latency: LatencyOptions | None = None, decoupled: bool = False
    ) -> ModelStats:
        stats = cls(name, version)
        if latency is not None and latency.enabled:
            stats.latency = {kind: LatencyWindow(latency) for kind in LATENCY_KINDS}
        if latency is not None and latency.histograms and decoupled:
            stats.first_response = Histogram(FIRST_RESPONSE_BUCKETS_MS)
        return stats

    def record_success(self, total_ns: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int,
                       batch_size: int) -> None:  # fmt: skip
        for d, ns in (
            (self.success, total_ns),
            (self.queue, queue_ns),
            (self.compute_input, input_ns),
            (self.compute_infer, infer_ns),
            (self.compute_output, output_ns),
        ):
            d.count += 1
            d.ns += ns
        if self.latency:
            for kind, ns in zip(
                LATENCY_KINDS, (total_ns, queue_ns, input_ns, infer_ns, output_ns), strict=True
            ):
                self.latency[kind].add(ns / 1000)
        self.inference_count += batch_size
        self.last_inference_ms = int(time.time() * 1000)

    def record_cache_hit(self, total_ns: int, lookup_ns: int) -> None:
        """A request answered from the response cache: a success, no inference (as Triton counts it)."""
        self.success.add(total_ns)
        self.cache_hit.add(lookup_ns)
        self.last_inference_ms = int(time.time() * 1000)

    def record_execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """Once per model execution (a merged batch counts once)."""
        self.execution_count += 1
        b = self.batches.get(batch_size)
        if b is None:
            b = self.batches[batch_size] = BatchStats()
        for d, ns in (
            (b.compute_input, input_ns),
            (b.compute_infer, infer_ns),
            (b.compute_output, output_ns),
        ):
            d.count += 1
            d.ns += ns

    def record_failure(self, total_ns: int, exc: BaseException) -> None:
        self.fail.add(total_ns)
        self.failures[failure_reason(exc)] += 1
        self.last_inference_ms = int(time.time() * 1000)
