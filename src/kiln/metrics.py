"""Prometheus metrics with Triton's names and labels, read from the core's statistics at scrape time.

A custom collector (not prometheus-client Counters) so names are exactly Triton's: ``nv_inference_count``, not
``nv_inference_count_total``. Collectors live on a registry passed in, never the global one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from kiln.stats import FAILURE_REASONS, Duration, ModelStats

_COUNTERS: list[tuple[str, str, Callable[[ModelStats], float]]] = [
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s.success.count),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)",
     lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)",
     lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     lambda s: _us(s.success, s.fail)),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda s: _us(s.queue)),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     lambda s: _us(s.compute_input)),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     lambda s: _us(s.compute_infer)),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     lambda s: _us(s.compute_output)),
]  # fmt: skip


def _us(*durations: Duration) -> float:
    return sum(d.ns for d in durations) // 1000


class InferenceCollector(Collector):
    def __init__(self, stats: Callable[[], Sequence[ModelStats]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        all_stats = list(self.stats())
        for name, doc, value in _COUNTERS:
            metric = Metric(name, doc, "counter")
            for s in all_stats:
                metric.add_sample(name, {"model": s.name, "version": s.version}, value(s))
            yield metric
        failure = Metric("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
                         "counter")  # fmt: skip
        for s in all_stats:
            for reason in FAILURE_REASONS:
                labels = {"model": s.name, "version": s.version, "reason": reason}
                failure.add_sample("nv_inference_request_failure", labels, s.failures.get(reason, 0))
        yield failure
        pending = Metric("nv_inference_pending_request_count",
                         "Instantaneous number of pending requests awaiting execution per-model.", "gauge")  # fmt: skip
        for s in all_stats:
            pending.add_sample(pending.name, {"model": s.name, "version": s.version}, s.pending)
        yield pending


def build_registry(stats: Callable[[], Sequence[ModelStats]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InferenceCollector(stats))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
    return registry
