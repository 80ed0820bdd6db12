"""Prometheus metrics with Triton's names and labels, read from the core's statistics at scrape time.

A custom collector (not prometheus-client Counters) so names are exactly Triton's: ``nv_inference_count``, not
``nv_inference_count_total``. Collectors live on a registry passed in, never the global one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from kiln.stats.counters import FAILURE_REASONS, Duration, ModelStats
from kiln.stats.cpu import CpuCollector
from kiln.stats.custom import CustomMetrics
from kiln.stats.latency import LATENCY_KINDS

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
    ("nv_cache_num_hits_per_model", "Number of cache hits per model", lambda s: s.cache_hit.count),
    ("nv_cache_num_misses_per_model", "Number of cache misses per model", lambda s: s.cache_miss.count),
    ("nv_cache_hit_duration_per_model", "Total cache hit duration per model, in microseconds",
     lambda s: _us(s.cache_hit)),
    ("nv_cache_miss_duration_per_model", "Total cache miss (insertion) duration per model, in microseconds",
     lambda s: _us(s.cache_miss)),
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
        yield from _latency_metrics(all_stats)


def _first_response_metric(all_stats: Sequence[ModelStats]) -> Iterator[Metric]:
    """Triton's ``nv_inference_first_response_histogram_ms``: decoupled models, with histogram_latencies=true."""
    with_first = [s for s in all_stats if s.first_response is not None]
    if not with_first:
        return
    name = "nv_inference_first_response_histogram_ms"
    hist = Metric(name, "Duration from request to first response in milliseconds", "histogram")
    for s in with_first:
        h, labels = s.first_response, {"model": s.name, "version": s.version}
        assert h is not None
        _add_histogram(hist, labels, h.cumulative_buckets(), h.count, h.total)
    yield hist


def _add_histogram(
    metric: Metric, labels: dict[str, str], buckets: list[tuple[str, int]], count: int, total: float
) -> None:
    for bound, n in buckets:
        metric.add_sample(metric.name + "_bucket", {**labels, "le": bound}, n)
    metric.add_sample(metric.name + "_count", labels, count)
    metric.add_sample(metric.name + "_sum", labels, total)


def _latency_metrics(all_stats: Sequence[ModelStats]) -> Iterator[Metric]:
    """Triton's summaries (nv_inference_request_summary_us, ...) and Kiln's histograms, when enabled."""
    yield from _first_response_metric(all_stats)
    with_latency = [s for s in all_stats if s.latency]
    if not with_latency:
        return
    options = with_latency[0].latency["request"].options
    for kind in LATENCY_KINDS:
        if options.summaries:
            name = f"nv_inference_{kind}_summary_us"
            summary = Metric(
                name, f"Summary of {kind.replace('_', ' ')} durations in microseconds", "summary"
            )
            for s in with_latency:
                window, labels = s.latency[kind], {"model": s.name, "version": s.version}
                for q, value in window.quantiles().items():
                    summary.add_sample(name, {**labels, "quantile": str(q)}, value)
                summary.add_sample(name + "_count", labels, window.count)
                summary.add_sample(name + "_sum", labels, window.total_us)
            yield summary
        if options.histograms:
            name = f"kiln_inference_{kind}_duration_histogram_us"
            hist = Metric(
                name, f"Histogram of {kind.replace('_', ' ')} durations in microseconds", "histogram"
            )
            for s in with_latency:
                window, labels = s.latency[kind], {"model": s.name, "version": s.version}
                _add_histogram(hist, labels, window.cumulative_buckets(), window.count, window.total_us)
            yield hist


def build_registry(
    stats: Callable[[], Sequence[ModelStats]], custom: CustomMetrics | None = None
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InferenceCollector(stats))
    registry.register(CpuCollector())  # nv_cpu_utilization, nv_cpu_memory_{total,used}_bytes
    if custom is not None:
        registry.register(custom)  # type: ignore[arg-type]
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
    return registry
